"""Per-chat generation settings: system prompt, OpenChat condition, temperature, max tokens."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.validation import Number
from textual.widgets import Button, Input, Label, TextArea


@dataclass
class ChatSettings:
    system: str | None = None
    condition: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None

    def generation(self) -> dict:
        """The `settings` JSON stored with a chat."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_chat(cls, row: dict, fallback: ChatSettings) -> ChatSettings:
        settings = row.get("settings") if isinstance(row.get("settings"), dict) else {}
        return cls(
            system=row.get("system"),
            condition=row.get("condition"),
            temperature=settings.get("temperature", fallback.temperature),
            max_tokens=settings.get("max_tokens", fallback.max_tokens),
        )

    def describe(self) -> str:
        parts = []
        if self.condition:
            parts.append(f"cond {self.condition}")
        if self.temperature is not None:
            parts.append(f"T {self.temperature:g}")
        if self.max_tokens:
            parts.append(f"max {self.max_tokens}")
        if self.system:
            parts.append("system ✓")
        return " · ".join(parts)


class SettingsScreen(ModalScreen[ChatSettings | None]):
    """Edit the current chat's settings; they apply to the next request and are saved."""

    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]

    def __init__(self, settings: ChatSettings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(classes="dialog", id="settings"):
            yield Label("Chat settings", classes="dialog-title")
            yield Label("System prompt")
            yield TextArea(s.system or "", id="system", soft_wrap=True, show_line_numbers=False)
            yield Label("Condition (OpenChat, e.g. GPT4 Correct or Math Correct)")
            yield Input(s.condition or "", id="condition", placeholder="none")
            with Horizontal(classes="pair"):
                with Vertical():
                    yield Label("Temperature (0-2)")
                    yield Input(
                        "" if s.temperature is None else f"{s.temperature:g}",
                        id="temperature",
                        placeholder="server default",
                        type="number",
                        validators=[Number(minimum=0, maximum=2)],
                    )
                with Vertical():
                    yield Label("Max tokens")
                    yield Input(
                        "" if not s.max_tokens else str(s.max_tokens),
                        id="max_tokens",
                        placeholder="server default",
                        type="integer",
                        validators=[Number(minimum=1)],
                    )
            with Horizontal(classes="buttons"):
                yield Button("Save (^s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        if self.app.is_headless:
            for field in self.query(Input):
                field.cursor_blink = False
            self.query_one(TextArea).cursor_blink = False
        self.query_one("#system", TextArea).focus()

    def action_save(self) -> None:
        temperature = self.query_one("#temperature", Input)
        max_tokens = self.query_one("#max_tokens", Input)
        for field in (temperature, max_tokens):
            result = field.validate(field.value) if field.value.strip() else None
            if result is not None and not result.is_valid:
                self.notify(f"{field.id.replace('_', ' ')}: {'; '.join(result.failure_descriptions)}", severity="error")
                field.focus()
                return
        system = self.query_one("#system", TextArea).text.strip()
        condition = self.query_one("#condition", Input).value.strip()
        self.dismiss(
            ChatSettings(
                system=system or None,
                condition=condition or None,
                temperature=float(temperature.value) if temperature.value.strip() else None,
                max_tokens=int(max_tokens.value) if max_tokens.value.strip() else None,
            )
        )

    @on(Button.Pressed, "#save")
    def save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#cancel")
    def cancel_pressed(self) -> None:
        self.dismiss(None)
