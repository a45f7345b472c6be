"""The setup screen: pick a scenario, adjust the main knobs, start."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from hpload.errors import HploadError, one_line
from hpload.loadgen.specs import LoadSpec
from hpload.tui.plans import SERVER_KINDS, Knobs, ScenarioChoice, apply_knobs, knobs_of, load_plan
from hpload.tui.session import RunPlan


def _int_or_none(text: str, field: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise HploadError(f"{field}: '{text}' is not a whole number; fix: type e.g. 8, or clear it") from None


def _float_or_none(text: str, field: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise HploadError(f"{field}: '{text}' is not a number; fix: type e.g. 2.5, or clear it") from None


class SetupScreen(Screen[None]):
    class StartRequested(Message):
        """The user asked to run this plan; the app opens a run screen for it."""

        def __init__(self, plan: RunPlan) -> None:
            super().__init__()
            self.plan = plan

    BINDINGS = [
        Binding("ctrl+s,f5", "start", "Start run", priority=True),
    ]

    def __init__(self, choices: list[ScenarioChoice], initial: str | None = None) -> None:
        super().__init__()
        self.choices = choices
        self.initial = initial
        self.plan: RunPlan | None = None

    def compose(self) -> ComposeResult:
        yield Static("hpload · set up a run  (ctrl+s starts, ? lists every key)", id="setup-title")
        with Horizontal(id="setup-body"):
            yield OptionList(*[Option(c.name, id=str(i)) for i, c in enumerate(self.choices)], id="scenarios")
            with Vertical(id="knobs"):
                kinds = [(k, k) for k in SERVER_KINDS]
                yield self._row("server", Select(kinds, id="server-kind", allow_blank=False, compact=True))
                yield self._row(
                    "settings", Input(id="server-args", placeholder="e.g. max_num_seqs=64 dtype=float32", compact=True)
                )
                yield self._row(
                    "compare with",
                    Select([("none", "none"), *kinds], id="compare-kind", allow_blank=False, compact=True),
                )
                yield self._row("concurrency", Input(id="concurrency", placeholder="closed loop", compact=True))
                yield self._row("rate req/s", Input(id="rate", placeholder="open loop", compact=True))
                yield self._row("max_tokens", Input(id="max-tokens", compact=True))
                yield self._row("duration s", Input(id="duration", placeholder="as the scenario bounds it", compact=True))
                yield Button("Start ▶", id="start", variant="primary", compact=True)
                yield Static(id="plan-summary")
                yield Static(id="setup-error")
        yield Footer()

    @staticmethod
    def _row(label: str, widget: Input | Select[str]) -> Horizontal:
        return Horizontal(Label(label, classes="knob-label"), widget, classes="knob-row")

    def on_mount(self) -> None:
        names = [c.name for c in self.choices]
        index = names.index(self.initial) if self.initial in names else 0
        options = self.query_one("#scenarios", OptionList)
        options.highlighted = index
        self._select(index)
        options.focus()

    @on(OptionList.OptionHighlighted, "#scenarios")
    def _scenario_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self._select(event.option_index)

    @on(OptionList.OptionSelected, "#scenarios")
    def _scenario_selected(self, event: OptionList.OptionSelected) -> None:
        self.query_one("#server-kind", Select).focus()

    def _select(self, index: int) -> None:
        choice = self.choices[index]
        try:
            plan = load_plan(choice)
        except HploadError as err:
            self.plan = None
            self._error(f"{choice.name}: {err}")
            return
        self.plan = plan
        self._fill(knobs_of(plan))
        self._error("; ".join(plan.notes))
        self._summarise()

    def _fill(self, knobs: Knobs) -> None:
        kind = knobs.server_kind if knobs.server_kind in SERVER_KINDS else SERVER_KINDS[0]
        self.query_one("#server-kind", Select).value = kind
        self.query_one("#compare-kind", Select).value = (
            knobs.compare_kind if knobs.compare_kind in SERVER_KINDS else "none"
        )
        self.query_one("#server-args", Input).value = knobs.server_args
        self.query_one("#concurrency", Input).value = "" if knobs.concurrency is None else str(knobs.concurrency)
        self.query_one("#rate", Input).value = "" if knobs.rate is None else f"{knobs.rate:g}"
        self.query_one("#max-tokens", Input).value = str(knobs.max_tokens)
        self.query_one("#duration", Input).value = "" if knobs.duration_s is None else f"{knobs.duration_s:g}"

    def knobs(self) -> Knobs:
        max_tokens = _int_or_none(self.query_one("#max-tokens", Input).value, "max_tokens")
        duration = _float_or_none(self.query_one("#duration", Input).value, "duration s")
        if max_tokens is None:
            raise HploadError("max_tokens: empty; fix: type the output tokens per request, e.g. 128")
        return Knobs(
            server_kind=str(self.query_one("#server-kind", Select).value),
            server_args=self.query_one("#server-args", Input).value,
            compare_kind=str(self.query_one("#compare-kind", Select).value),
            concurrency=_int_or_none(self.query_one("#concurrency", Input).value, "concurrency"),
            rate=_float_or_none(self.query_one("#rate", Input).value, "rate req/s"),
            max_tokens=max_tokens,
            duration_s=duration,
        )

    def resolved_plan(self) -> RunPlan:
        if self.plan is None:
            raise HploadError("scenario: none loaded; fix: pick another scenario or correct its file")
        return apply_knobs(self.plan, self.knobs())

    def _summarise(self) -> None:
        try:
            plan = self.resolved_plan()
        except HploadError as err:
            self.query_one("#plan-summary", Static).update("")
            self._error(str(err))
            return
        lines = [f"{s.label}: {s.kind}" + _server_detail(s) for s in plan.scenario.servers]
        lines.append(f"{load_text(plan.load)}, max_tokens {plan.workload.max_tokens}, per server")
        if plan.scenario.sweep is not None:
            lines.append("sweep: every point runs; the points table marks the best feasible one")
        self.query_one("#plan-summary", Static).update(Text("\n".join(lines)))
        self._error("; ".join(plan.notes))

    def _error(self, text: str) -> None:
        self.query_one("#setup-error", Static).update(Text(one_line(text, 300)) if text else "")

    @on(Input.Changed)
    @on(Select.Changed)
    def _knob_changed(self) -> None:
        if self.plan is not None:
            self._summarise()

    @on(Input.Submitted)
    @on(Button.Pressed, "#start")
    def _submit(self) -> None:
        self.action_start()

    def action_start(self) -> None:
        try:
            plan = self.resolved_plan()
        except HploadError as err:
            self._error(str(err))
            return
        self.post_message(self.StartRequested(plan))


def load_text(load: LoadSpec) -> str:
    loop = (
        f"concurrency {load.concurrency}" if load.concurrency
        else f"rate {load.rate:g}/s" if load.rate
        else f"{len(load.steps)} load steps"
    )
    bounds = [f"{load.duration_s:g} s"] if load.duration_s else []
    bounds += [f"{load.num_requests} requests"] if load.num_requests else []
    return f"{loop}, {' or '.join(bounds) or 'its steps'}"


def _server_detail(settings: object) -> str:
    parts = []
    for name in ("model", "max_num_seqs", "batch_size", "mode", "ttft_ms", "itl_ms", "url"):
        value = getattr(settings, name, None)
        if value is not None:
            parts.append(f"{name}={value}")
    return f" ({', '.join(parts)})" if parts else ""
