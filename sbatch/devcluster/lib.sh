# Sourced by start and stop: what they agree on about the daemons they record.

ours() {  # ours PIDFILE COMM: the pid recorded there is alive and still the daemon named COMM (not a reused pid)
    [ -s "$1" ] || return 1
    local pid
    pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
