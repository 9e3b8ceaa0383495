#!/usr/bin/env bash
# Smoke test of `openchat chat` in a real terminal: tmux runs it at 80x24 against the scripted
# server (tests/tui/fake_server.py); send-keys types, capture-pane reads the screen.
#
#   bash tests/tui/tmux_smoke.sh          (PYTHON=... to pick the interpreter)
#
# Checks: the model list arrives, a message gets a streamed Markdown reply, the help and the
# verdicts screens open, ctrl+q quits (exit 0), the chat is in the catalog, `--chat ID` reopens
# it, and a chat titled with markup-like brackets (issue 14) shows literally on later starts.
set -euo pipefail

PY=${PYTHON:-python}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
SESSION="openchat-smoke-$$"
SERVER_PID=""

cleanup() {
    tmux kill-session -t "$SESSION" 2>/dev/null || true
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

screen() { tmux capture-pane -p -t "$SESSION"; }

# Waits are generous (a loaded CI machine starts Python slowly); each ends once its text shows.
wait_screen() {  # PATTERN [SECONDS]
    local tries=$(( ${2:-30} * 10 ))
    for _ in $(seq "$tries"); do
        if screen 2>/dev/null | grep -qF -- "$1"; then return 0; fi
        sleep 0.1
    done
    echo "FAIL: '$1' did not appear on the screen:" >&2
    screen >&2 || true
    exit 1
}

cd "$ROOT"
"$PY" -m tests.tui.fake_server --port 0 > "$WORK/server.out" 2>&1 &
SERVER_PID=$!
for _ in $(seq 600); do [ -s "$WORK/server.out" ] && break; sleep 0.1; done
BASE=$(head -n1 "$WORK/server.out")
case "$BASE" in http://*) ;; *) echo "FAIL: fake server did not start: $BASE" >&2; exit 1;; esac

export OPENCHAT_HOME="$WORK/home"
run_tui() {  # ARGS...
    tmux new-session -d -s "$SESSION" -x 80 -y 24 \
        "OPENCHAT_HOME='$OPENCHAT_HOME' '$PY' -m openchat_cli.app chat --endpoint '$BASE' $*; echo EXITED \$?; sleep 30"
}

run_tui
wait_screen "2 models served" 90
wait_screen "^t Verdicts"
tmux send-keys -t "$SESSION" "Hello from tmux" Enter
wait_screen "print('hello world')" 60
wait_screen "fake-model · done" 60
screen > "$WORK/chat.txt"
grep -qF "Hello from tmux" "$WORK/chat.txt"

tmux send-keys -t "$SESSION" F1
wait_screen "esc closes"
tmux send-keys -t "$SESSION" Escape
wait_screen "enter sends"   # (a lone Escape must not run into the next key: wait for it)
tmux send-keys -t "$SESSION" C-t
wait_screen "No judge or grade runs"
tmux send-keys -t "$SESSION" C-t
wait_screen "Message…"
tmux send-keys -t "$SESSION" C-q
wait_screen "EXITED 0"
tmux kill-session -t "$SESSION"

CHAT_ID=$("$PY" -m openchat_cli.app catalog list chats --json | "$PY" -c \
    'import json, sys; rows = json.load(sys.stdin); assert rows[0]["title"] == "Hello from tmux", rows; print(rows[0]["id"])')

run_tui --chat "$CHAT_ID"
wait_screen "Hello from tmux" 90
wait_screen "Hello from tmux · connected"
tmux send-keys -t "$SESSION" C-q
wait_screen "EXITED 0"

tmux kill-session -t "$SESSION"

# A first message that looks like markup becomes the title; every later start shows it.
run_tui
wait_screen "2 models served" 90
tmux send-keys -t "$SESSION" -l "[/INST] what does [[A]] mean? [bold]"
tmux send-keys -t "$SESSION" Enter
wait_screen "fake-model · done" 60
tmux send-keys -t "$SESSION" C-q
wait_screen "EXITED 0"
tmux kill-session -t "$SESSION"
run_tui
wait_screen "[/INST] what" 90
wait_screen "2 models served" 90
tmux send-keys -t "$SESSION" C-q
wait_screen "EXITED 0"

echo "tmux smoke: ok"
