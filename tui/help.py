"""The help screen: every key of every screen, read from the bindings themselves so it can never fall behind."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

_KEY_NAMES = {"question_mark": "?", "escape": "esc", "space": "space", "enter": "enter"}


def key_text(key: str) -> str:
    return ", ".join(_KEY_NAMES.get(k.strip(), k.strip()) for k in key.split(","))


def binding_rows(bindings: list[BindingType]) -> list[tuple[str, str]]:
    rows = []
    for item in bindings:
        binding = item if isinstance(item, Binding) else Binding(*item)
        rows.append((key_text(binding.key), binding.description or binding.action))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close help")]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 64; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    HelpScreen .help-title { text-style: bold; color: $accent; }
    """

    def __init__(self, sections: list[tuple[str, list[BindingType]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("hpload keys", classes="help-title")
            for title, bindings in self.sections:
                lines = [f"[b]{escape(title)}[/b]"]
                lines += [f"  {escape(key):<14} {escape(text)}" for key, text in binding_rows(bindings)]
                yield Static("\n".join(lines), markup=True)
            yield Static("esc closes this help", classes="help-foot")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
