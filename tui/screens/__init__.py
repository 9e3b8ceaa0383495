"""The TUI's screens: chat, verdicts (runs, questions, one question), settings, help, dialogs."""
