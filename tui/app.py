"""``HploadApp``: the setup screen first, then run screens; app-wide keys for help, theme and quit."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from hpload.tui.help import HelpScreen
from hpload.tui.plans import ScenarioChoice
from hpload.tui.run import RunScreen
from hpload.tui.session import RunPlan
from hpload.tui.setup import SetupScreen

DARK, LIGHT = "textual-dark", "textual-light"


class HploadApp(App[int]):
    CSS_PATH = "hpload.tcss"
    TITLE = "hpload"
    ENABLE_COMMAND_PALETTE = False  # its ctrl+p would be one more key the help screen has to explain

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help"),
        Binding("t", "toggle_theme", "Theme"),
        Binding("q,ctrl+q", "quit", "Quit", priority=False),
    ]

    def __init__(
        self,
        choices: list[ScenarioChoice],
        *,
        initial: str | None = None,
        start_plan: RunPlan | None = None,
        theme: str = DARK,
        results_root: Path | None = None,
        run_in: str = "process",
    ) -> None:
        super().__init__()
        self.results_root = results_root
        self.run_in = run_in
        self.choices = choices
        self.initial = initial
        self.start_plan = start_plan
        self.theme = theme

    def on_mount(self) -> None:
        self.push_screen(SetupScreen(self.choices, self.initial))
        if self.start_plan is not None:
            self.push_screen(self.run_screen(self.start_plan))

    def run_screen(self, plan: RunPlan, *, autostart: bool = True) -> RunScreen:
        return RunScreen(plan, autostart=autostart, results_root=self.results_root, run_in=self.run_in)

    def on_setup_screen_start_requested(self, event: SetupScreen.StartRequested) -> None:
        self.push_screen(self.run_screen(event.plan))

    def help_sections(self) -> list[tuple[str, list[BindingType]]]:
        return [
            ("everywhere", list(self.BINDINGS)),
            ("setup screen", list(SetupScreen.BINDINGS) + [Binding("enter", "start", "Start (in a field)")]),
            ("run screen", list(RunScreen.BINDINGS)),
            ("help", list(HelpScreen.BINDINGS)),
        ]

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.help_sections()))

    def action_toggle_theme(self) -> None:
        self.theme = LIGHT if self.theme == DARK else DARK

    async def action_quit(self) -> None:
        # Stop every run first: its servers go down and its finished results land before the app goes.
        for screen in self.screen_stack:
            if isinstance(screen, RunScreen):
                await screen.stop_and_wait()
        self.exit(0)
