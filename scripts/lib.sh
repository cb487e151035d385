# shellcheck shell=bash
# Shared helpers for scripts/*: install and start what Krill needs on a Debian
# machine (root, no systemd required), idempotently.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   krill_ensure_rabbitmq   # broker up with deploy/rabbitmq config, AMQP answering
#   krill_ensure_docker     # engine up, `docker info` answering
#   krill_ensure_images     # krill/base:1 and krill/python:1 built (scripts/images)
#   krill_ensure_postgres   # PostgreSQL up, role krill, database krill_gateway_test (KRILL_TEST_PG_URL)
#   krill_ensure_chromium   # chromium + chromedriver (apt) for the web view's browser test
#   krill_ensure_firefox    # firefox-esr (apt) + geckodriver (cargo install) for the same test
#   krill_own_broker PORT   # a private RabbitMQ node on PORT for this script's run
#                           # (exports KRILL_AMQP_URL, KRILL_RABBITMQ_NODE)
#   krill_cluster_up        # a private three-node cluster (scripts/cluster)
#   krill_ensure_keys KRILL ETC  # your signing key, the pool key pair, trusted-keys
#   krill_ensure_net_tools  # nft, ip and nsenter for the worker network (--allow-network)
#
# Safe to source from scripts running under `set -euo pipefail`; it does not
# change the caller's shell options. Tunables (environment):
#   KRILL_RABBITMQ_TIMEOUT  seconds to wait for the broker (default 120)
#   KRILL_DOCKER_TIMEOUT    seconds to wait for dockerd (default 60)
#   KRILL_DOCKERD_LOG       dockerd's log when we start it (/var/log/krill-dockerd.log)

if [[ -n "${KRILL_LIB_SOURCED:-}" ]]; then
  return 0
fi
KRILL_LIB_SOURCED=1

# Repository root, from this file's own location (scripts/lib.sh).
KRILL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KRILL_ROOT

krill_log() {
  printf '[krill] %s\n' "$*" >&2
}

krill_die() {
  printf '[krill] error: %s\n' "$*" >&2
  exit 1
}

# Whether a Debian package is installed (not just known or half-configured).
krill_pkg_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

# krill_apt_install PKG...: installs the packages that are missing, running
# `apt-get update` once per shell first. Does nothing when all are installed.
krill_apt_install() {
  local pkg
  local -a missing=()
  for pkg in "$@"; do
    krill_pkg_installed "$pkg" || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  if [[ "$(id -u)" != 0 ]]; then
    krill_die "packages missing (${missing[*]}) and not root: run as root or install them with apt-get"
  fi
  command -v apt-get >/dev/null 2>&1 ||
    krill_die "packages missing (${missing[*]}) and apt-get not found: this script expects Debian"
  local log=/var/log/krill-apt.log
  # Another apt (unattended-upgrades, a second scripts/test) may hold the dpkg
  # lock: wait for it (apt's own option) instead of failing at once.
  local -a lock=(-o "DPkg::Lock::Timeout=${KRILL_APT_LOCK_TIMEOUT:-300}")
  if [[ -z "${KRILL_APT_UPDATED:-}" ]]; then
    krill_log "apt-get update (missing: ${missing[*]}; log: $log)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" update -q >>"$log" 2>&1; then
      tail -n 20 "$log" >&2
      krill_die "apt-get update failed (see $log)"
    fi
    KRILL_APT_UPDATED=1
  fi
  krill_log "installing ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    krill_die "apt-get install ${missing[*]} failed (see $log)"
  fi
}

# Whether something accepts TCP connections on HOST PORT (bash /dev/tcp).
krill_port_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

# ---------------------------------------------------------------- RabbitMQ --

KRILL_RABBITMQ_ETC=/etc/rabbitmq

krill__rabbitmq_running() {
  rabbitmq-diagnostics -q ping >/dev/null 2>&1
}

krill__rabbitmq_logs() {
  local f=/var/log/rabbitmq/startup_err node_log
  node_log="/var/log/rabbitmq/rabbit@$(hostname -s).log"
  if [[ -s "$f" ]]; then
    printf '[krill] --- last lines of %s ---\n' "$f" >&2
    tail -n 15 "$f" >&2 || true
  fi
  if [[ -s "$node_log" ]]; then
    printf '[krill] --- last errors in %s ---\n' "$node_log" >&2
    grep -E '\[(error|critical)\]' "$node_log" | tail -n 10 >&2 || true
  fi
}

# Seconds left before DEADLINE (a $SECONDS value), at least 5.
krill__left() {
  local left=$(($1 - SECONDS))
  echo $((left > 5 ? left : 5))
}

# krill__rabbitmq_start DEADLINE
krill__rabbitmq_start() {
  local pidfile=/var/run/rabbitmq/pid pid=""
  if [[ -s "$pidfile" ]]; then
    pid=$(<"$pidfile")
    if [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == beam.smp ]]; then
      krill_log "rabbitmq-server (pid $pid) is still booting; waiting for it"
      return 0
    fi
    # Left by a broker that died or a start that was interrupted: the init
    # script would wait up to 10 min for that pid.
    rm -f "$pidfile"
  fi
  krill_log "starting rabbitmq-server"
  if command -v service >/dev/null 2>&1; then
    # In the background: the init script then waits for the node itself (up
    # to 10 min) and was seen to hang after a failed boot although the node
    # came up. krill_ensure_rabbitmq waits for the node on its own.
    (timeout "$(krill__left "$1")" service rabbitmq-server start) </dev/null >/dev/null 2>&1 &
    KRILL__RABBITMQ_STARTER=$!
  else
    krill__rabbitmq_detached
  fi
}

krill__rabbitmq_detached() {
  krill_log "starting rabbitmq-server -detached"
  install -d -o rabbitmq -g rabbitmq /var/log/rabbitmq /var/lib/rabbitmq
  rabbitmq-server -detached </dev/null >/dev/null 2>&1 || true
}

# krill__rabbitmq_stop DEADLINE
krill__rabbitmq_stop() {
  local deadline=$1
  krill_log "stopping rabbitmq-server"
  # `stop` works however the node was started (init script or -detached).
  # Not `shutdown`: it waits for the OS process to disappear, which never
  # happens when the broker's parent is a PID 1 that does not reap zombies.
  timeout "$(krill__left "$deadline")" rabbitmqctl -q stop >/dev/null 2>&1 || true
  while krill__rabbitmq_running || krill_port_open 127.0.0.1 5672; do
    if ((SECONDS >= deadline)); then
      krill__rabbitmq_logs
      krill_die "rabbitmq-server did not stop within ${KRILL_RABBITMQ_TIMEOUT}s"
    fi
    sleep 1
  done
  rm -f /var/run/rabbitmq/pid
}

# krill__install_file SRC DST MODE: copies when different; returns 0 if it
# changed DST, 1 if DST was already identical.
krill__install_file() {
  if cmp -s "$1" "$2"; then
    return 1
  fi
  install -D -m "$3" -o rabbitmq -g rabbitmq "$1" "$2"
  krill_log "installed $2"
  return 0
}

# krill_ensure_rabbitmq: rabbitmq-server is installed, runs with the config
# from deploy/rabbitmq (restarted if that config changed), and answers AMQP on
# 127.0.0.1:5672 (and HTTP on 15672, management) before this returns.
krill_ensure_rabbitmq() {
  : "${KRILL_RABBITMQ_TIMEOUT:=120}"
  local src="$KRILL_ROOT/deploy/rabbitmq" changed=0 deadline
  KRILL__RABBITMQ_STARTER=""
  [[ -f "$src/rabbitmq.conf" ]] || krill_die "missing $src/rabbitmq.conf"
  krill_apt_install rabbitmq-server

  if krill__install_file "$src/rabbitmq.conf" "$KRILL_RABBITMQ_ETC/rabbitmq.conf" 0644; then
    changed=1
  fi
  if krill__install_file "$src/enabled_plugins" "$KRILL_RABBITMQ_ETC/enabled_plugins" 0644; then
    changed=1
  fi

  deadline=$((SECONDS + KRILL_RABBITMQ_TIMEOUT))
  if krill__rabbitmq_running; then
    if ((changed)); then
      krill_log "rabbitmq config changed: restarting the broker so it takes effect"
      krill__rabbitmq_stop "$deadline"
      krill__rabbitmq_start "$deadline"
    fi
  else
    krill__rabbitmq_start "$deadline"
  fi

  # await_startup fails at once while the Erlang node is not up yet: retry.
  until timeout "$(krill__left "$deadline")" rabbitmqctl -q await_startup >/dev/null 2>&1; do
    # `service ... start` gave up and no node is running: try without it.
    if [[ -n "${KRILL__RABBITMQ_STARTER:-}" ]] && ! kill -0 "$KRILL__RABBITMQ_STARTER" 2>/dev/null; then
      if ! wait "$KRILL__RABBITMQ_STARTER" && ! krill__rabbitmq_running; then
        krill_log "service rabbitmq-server start failed"
        krill__rabbitmq_detached
      fi
      KRILL__RABBITMQ_STARTER=""
    fi
    if ((SECONDS >= deadline)); then
      krill__rabbitmq_logs
      krill_die "rabbitmq-server did not start within ${KRILL_RABBITMQ_TIMEOUT}s (see /var/log/rabbitmq; a config error shows as failed_to_prepare_configuration: check $KRILL_RABBITMQ_ETC/rabbitmq.conf)"
    fi
    sleep 1
  done
  until krill_port_open 127.0.0.1 5672; do
    if ((SECONDS >= deadline)); then
      krill__rabbitmq_logs
      krill_die "rabbitmq is up but nothing answers on 127.0.0.1:5672 within ${KRILL_RABBITMQ_TIMEOUT}s"
    fi
    sleep 1
  done
  # A still-running `service ... start` is not the caller's job to wait for.
  if [[ -n "${KRILL__RABBITMQ_STARTER:-}" ]]; then
    disown "$KRILL__RABBITMQ_STARTER" 2>/dev/null || true
  fi
  krill_log "rabbitmq ready on amqp://127.0.0.1:5672"
}

# ------------------------------------------------------------------ Docker --

krill__docker_up() {
  timeout 20 docker info >/dev/null 2>&1
}

# krill_ensure_docker: docker.io is installed and `docker info` answers before
# this returns; starts dockerd in the background (no systemd needed) if not.
krill_ensure_docker() {
  : "${KRILL_DOCKER_TIMEOUT:=60}"
  : "${KRILL_DOCKERD_LOG:=/var/log/krill-dockerd.log}"
  local deadline
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    krill_apt_install docker.io
  fi
  if krill__docker_up; then
    return 0
  fi
  if [[ "$(id -u)" != 0 ]]; then
    krill_die "docker engine not reachable and not root: start dockerd or add this user to the docker group"
  fi
  # Without systemd nobody may have mounted the cgroup hierarchies, and a
  # kernel with AppArmor on needs apparmor_parser for docker-default.
  if ! grep -q '^cgroup' /proc/mounts; then
    krill_apt_install cgroupfs-mount
    cgroupfs-mount || krill_die "could not mount cgroups (cgroupfs-mount failed)"
  fi
  if [[ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null || true)" == Y ]]; then
    krill_apt_install apparmor
  fi
  if pidof dockerd >/dev/null 2>&1; then
    krill_log "dockerd is running but not answering yet; waiting"
  else
    krill_log "starting dockerd (log: $KRILL_DOCKERD_LOG)"
    # crun, when installed, is registered as a second OCI runtime (tasks can
    # use it with krill-worker --container-runtime crun; bench/run --runtime crun).
    local runtimes=()
    if command -v crun >/dev/null 2>&1 && ! grep -qs '"crun"' /etc/docker/daemon.json; then
      runtimes=(--add-runtime "crun=$(command -v crun)")
    fi
    # runsc (gVisor), when installed: the stronger tier (krill-worker
    # --container-runtime runsc), through krill_runsc_wrapper's flags.
    if command -v runsc >/dev/null 2>&1 && ! grep -qs '"runsc"' /etc/docker/daemon.json; then
      runtimes+=(--add-runtime "runsc=$(krill_runsc_wrapper)")
    fi
    # setsid + closed stdin: dockerd outlives this script and holds none of
    # its descriptors (a caller piping our output must not wait for dockerd).
    setsid dockerd "${runtimes[@]+"${runtimes[@]}"}" >>"$KRILL_DOCKERD_LOG" 2>&1 </dev/null &
  fi
  deadline=$((SECONDS + KRILL_DOCKER_TIMEOUT))
  until krill__docker_up; do
    if ((SECONDS >= deadline)); then
      if [[ -s "$KRILL_DOCKERD_LOG" ]]; then
        printf '[krill] --- last lines of %s ---\n' "$KRILL_DOCKERD_LOG" >&2
        tail -n 30 "$KRILL_DOCKERD_LOG" >&2 || true
      fi
      krill_die "docker engine did not answer within ${KRILL_DOCKER_TIMEOUT}s (see $KRILL_DOCKERD_LOG)"
    fi
    if ! pidof dockerd >/dev/null 2>&1; then
      if [[ -s "$KRILL_DOCKERD_LOG" ]]; then
        printf '[krill] --- last lines of %s ---\n' "$KRILL_DOCKERD_LOG" >&2
        tail -n 30 "$KRILL_DOCKERD_LOG" >&2 || true
      fi
      krill_die "dockerd exited while starting (see $KRILL_DOCKERD_LOG)"
    fi
    sleep 1
  done
  krill_log "docker engine ready"
}

# krill_crun_ready: crun runs containers here. crun (1.8) refuses a hybrid
# cgroup host whose cgroup2 hierarchy still owns a controller ("cgroups in
# hybrid mode not supported, drop all controllers from cgroupv2"); on such a
# host every controller the v2 side holds (typically hugetlb) is mounted on v1
# instead, as systemd's hybrid layout does. Used by scripts/test and by
# bench/run --runtime crun, not by scripts/up.
krill_crun_ready() {
  local v2=/sys/fs/cgroup/unified c
  [[ -f $v2/cgroup.controllers ]] || return 0
  for c in $(cat "$v2/cgroup.controllers"); do
    krill_log "crun: mounting the cgroup v1 $c hierarchy (this hybrid host leaves it on cgroup2, which crun refuses)"
    mkdir -p "/sys/fs/cgroup/$c"
    mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || krill_die "could not mount the $c cgroup hierarchy for crun"
  done
}

# krill_runsc_wrapper: prints the path of a small wrapper that runs runsc with
# the flags Krill's containers need (dockerd's --add-runtime takes a path, no
# arguments): --network=none, because gVisor's own network stack refuses the
# namespace Docker 20.10 hands it ("cannot run with network enabled in root
# network namespace"), so runsc pools serve tasks without network. Krill's
# seccomp profile is not passed on (no --oci-seccomp): this gVisor answers
# EPERM for every refusal, and glibc threads need ENOSYS for clone3; under
# gVisor the task's syscalls are served by its sentry, not the host kernel.
krill_runsc_wrapper() {
  local w=/usr/local/libexec/krill/runsc
  if [[ ! -x $w ]]; then
    install -d /usr/local/libexec/krill
    printf '#!/bin/sh\nexec %s --network=none "$@"\n' "$(command -v runsc)" >"$w.tmp"
    chmod 0755 "$w.tmp" && mv "$w.tmp" "$w"
  fi
  echo "$w"
}

# ------------------------------------------------------------------ Images --

# krill_ensure_images: the task images exist and match their build inputs.
# scripts/images is idempotent and takes about a second when nothing changed.
krill_ensure_images() {
  "$KRILL_ROOT/scripts/images"
}

# ---------------------------------------------------- a private RabbitMQ node --

# krill_own_ctl PORT SECS ARGS...: `rabbitmqctl -n <node of PORT> ARGS`, killed
# after SECS together with everything it started (`timeout` alone leaves its
# Erlang VM running).
krill_own_ctl() {
  local port=$1 secs=$2
  shift 2
  krill__bounded "$secs" rabbitmqctl -q -n "$(krill_own_node "$port")" "$@" >/dev/null 2>&1
}

# krill__bounded SECS CMD...: runs CMD in a session of its own (stdin from
# /dev/null, the caller's stdout and stderr) and kills that whole session after
# SECS (exit 124), since `timeout` alone leaves an Erlang VM it started running.
krill__bounded() {
  local secs=$1 pid end
  shift
  setsid "$@" </dev/null &
  pid=$!
  end=$((SECONDS + secs))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= end)); then
      kill -KILL -- "-$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      return 124
    fi
    sleep 0.2
  done
  wait "$pid"
}

# krill_own_node PORT: the Erlang node name of the private node on PORT.
krill_own_node() {
  printf 'krill-own-%s@%s' "$1" "$(hostname -s)"
}

# krill_own_broker PORT: a throwaway RabbitMQ node of its own (same package, its
# own port, node name, data and logs under /tmp/krill-broker-PORT), started
# fresh, and stopped again when the calling script exits (an EXIT trap). Exports
# KRILL_AMQP_URL and KRILL_RABBITMQ_NODE for it. The node name and directory
# come from the port, so two scripts on two ports never touch each other's node
# (a shared machine: give each user a port of their own).
krill_own_broker() {
  local port=$1 base node
  [[ "$port" =~ ^[0-9]+$ ]] || krill_die "krill_own_broker: PORT must be a number (got '$port')"
  base="/tmp/krill-broker-$port"
  node="$(krill_own_node "$port")"
  krill_apt_install rabbitmq-server
  install -d -o rabbitmq -g rabbitmq "$base"
  cat >"$base/rabbitmq.conf" <<CONF
listeners.tcp.default = $port
consumer_timeout = 25200000
log.file.level = warning
CONF
  echo '[].' >"$base/enabled_plugins"
  chown rabbitmq:rabbitmq "$base/rabbitmq.conf" "$base/enabled_plugins"
  export KRILL_AMQP_URL="amqp://127.0.0.1:$port/%2f" KRILL_RABBITMQ_NODE="$node"
  if krill_own_ctl "$port" 15 ping; then
    krill_log "stopping the private node an earlier run left"
    krill_own_ctl "$port" 60 stop || true
  fi
  krill_log "starting a private RabbitMQ node $node on port $port (data in $base)"
  rm -rf "${base:?}/mnesia" # a fresh node: nothing left from an earlier run
  # Open files as the packaged service has them: on a restart the broker
  # reopens every durable queue (one reply queue per task still unread), and
  # with the default 1024 it stalls recovering a few thousand.
  (cd /tmp && su rabbitmq -s /bin/sh -c "ulimit -n 65536; RABBITMQ_NODENAME=$node RABBITMQ_NODE_PORT=$port \
    RABBITMQ_DIST_PORT=$((port + 20000)) RABBITMQ_MNESIA_BASE=$base/mnesia \
    RABBITMQ_LOG_BASE=$base/log RABBITMQ_CONFIG_FILE=$base/rabbitmq.conf \
    RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins RABBITMQ_PID_FILE=$base/pid \
    rabbitmq-server -detached") >/dev/null 2>&1
  # shellcheck disable=SC2064 # the port is fixed now
  trap "krill_log 'stopping $node'; krill_own_ctl $port 60 stop || true" EXIT
  local deadline=$((SECONDS + 120))
  until krill_own_ctl "$port" 30 await_startup; do
    ((SECONDS < deadline)) || krill_die "the private node did not start (logs in $base/log)"
    sleep 1
  done
  until krill_port_open 127.0.0.1 "$port"; do
    ((SECONDS < deadline)) || krill_die "the private node does not answer on port $port"
    sleep 1
  done
  krill_log "private RabbitMQ ready on $KRILL_AMQP_URL"
}

# ------------------------------------------- a local three-node cluster --
#
# Three RabbitMQ nodes of the Debian package on this machine, joined into one
# cluster: node N (1..3) is krill-cN@<host> on AMQP port KRILL_CLUSTER_PORT+N-1
# (5681, 5682, 5683 by default), Erlang distribution port +20000, data and logs
# in /tmp/krill-cluster-<base port>/cN, and an Erlang cookie of its own (made
# once in /tmp/krill-cluster-<base port>/.erlang.cookie) so no other node on
# the machine (the shared one on 5672) can join or be joined. scripts/cluster
# is the command line over these.

krill_cluster_base() {
  printf '%s' "${KRILL_CLUSTER_PORT:-5681}"
}

krill_cluster_dir() {
  printf '/tmp/krill-cluster-%s' "$(krill_cluster_base)"
}

# krill_cluster_port N: node N's AMQP port.
krill_cluster_port() {
  printf '%s' $(($(krill_cluster_base) + $1 - 1))
}

# krill_cluster_node N: node N's Erlang node name.
krill_cluster_node() {
  printf 'krill-c%s-%s@%s' "$1" "$(krill_cluster_base)" "$(hostname -s)"
}

# krill_cluster_urls: the three AMQP URLs, comma-separated (KRILL_AMQP_URL's form).
krill_cluster_urls() {
  local n out=""
  for n in 1 2 3; do
    out+="${out:+,}amqp://127.0.0.1:$(krill_cluster_port "$n")/%2f"
  done
  printf '%s' "$out"
}

# krill_cluster_management_urls: the nodes' management API URLs, comma-separated.
krill_cluster_management_urls() {
  local n out=""
  for n in 1 2 3; do
    out+="${out:+,}http://127.0.0.1:$(($(krill_cluster_port "$n") + 10000))"
  done
  printf '%s' "$out"
}

# krill_cluster_ctl N SECS ARGS...: `rabbitmqctl ARGS` against node N with the
# cluster's cookie, killed after SECS with everything it started. Its output
# goes to stdout (quiet mode).
krill_cluster_ctl() {
  local n=$1 secs=$2 dir cmd="" a
  shift 2
  dir="$(krill_cluster_dir)"
  for a in "$@"; do cmd+=" '${a//\'/\'\\\'\'}'"; done
  krill__bounded "$secs" su rabbitmq -s /bin/sh -c "cd /tmp && HOME=$dir /usr/lib/rabbitmq/bin/rabbitmqctl -q -n $(krill_cluster_node "$n") $cmd" 2>/dev/null
}

# krill_cluster_pid N: the OS pid of node N's Erlang VM (empty when not running).
krill_cluster_pid() {
  local f pid
  f="$(krill_cluster_dir)/c$1/pid"
  [[ -s "$f" ]] || return 0
  pid=$(<"$f")
  if [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == beam.smp ]]; then
    printf '%s' "$pid"
  fi
}

# krill_cluster_prepare: the cookie and each node's config (deploy/rabbitmq's
# rabbitmq.conf with the node's own listener, its own management listener on
# loopback at the AMQP port + 10000, and pause_minority partition handling),
# written fresh.
krill_cluster_prepare() {
  local dir n base conf
  krill_apt_install rabbitmq-server
  dir="$(krill_cluster_dir)"
  install -d -o rabbitmq -g rabbitmq -m 0700 "$dir"
  if [[ ! -s "$dir/.erlang.cookie" ]]; then
    head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32 >"$dir/.erlang.cookie"
  fi
  chown rabbitmq:rabbitmq "$dir/.erlang.cookie"
  chmod 0400 "$dir/.erlang.cookie"
  for n in 1 2 3; do
    base="$dir/c$n"
    install -d -o rabbitmq -g rabbitmq "$base"
    conf="$base/rabbitmq.conf"
    sed -e "s/^listeners.tcp.default = .*/listeners.tcp.default = $(krill_cluster_port "$n")/" \
      -e '/^management\./d' -e 's/^log.file.level = .*/log.file.level = warning/' \
      "$KRILL_ROOT/deploy/rabbitmq/rabbitmq.conf" >"$conf"
    cat >>"$conf" <<CONF

## krill_cluster_prepare (scripts/lib.sh): a three-node cluster on one machine.
## The minority side of a partition pauses: a node cut off from the other two
## stops serving rather than taking writes the majority never sees.
cluster_partition_handling = pause_minority
## The management API (krill status --management) on loopback only.
management.tcp.port = $(($(krill_cluster_port "$n") + 10000))
management.tcp.ip = 127.0.0.1
CONF
    echo '[rabbitmq_management].' >"$base/enabled_plugins"
    chown rabbitmq:rabbitmq "$conf" "$base/enabled_plugins"
  done
}

# krill_cluster_start N: starts node N (its data kept) and waits until it runs.
krill_cluster_start() {
  local n=$1 dir base port node deadline
  dir="$(krill_cluster_dir)"
  base="$dir/c$n"
  port="$(krill_cluster_port "$n")"
  node="$(krill_cluster_node "$n")"
  if [[ -n "$(krill_cluster_pid "$n")" ]]; then
    krill_log "$node already runs"
  else
    krill_log "starting $node on port $port (data in $base)"
    (cd /tmp && su rabbitmq -s /bin/sh -c "ulimit -n 65536; HOME=$dir RABBITMQ_NODENAME=$node \
      RABBITMQ_NODE_PORT=$port RABBITMQ_DIST_PORT=$((port + 20000)) RABBITMQ_MNESIA_BASE=$base/mnesia \
      RABBITMQ_LOG_BASE=$base/log RABBITMQ_CONFIG_FILE=$base/rabbitmq.conf \
      RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins RABBITMQ_PID_FILE=$base/pid \
      /usr/lib/rabbitmq/bin/rabbitmq-server -detached") >/dev/null 2>&1
  fi
  deadline=$((SECONDS + ${KRILL_RABBITMQ_TIMEOUT:-120}))
  until krill_cluster_ctl "$n" 30 await_startup >/dev/null; do
    ((SECONDS < deadline)) || krill_die "$node did not start (logs in $base/log)"
    sleep 1
  done
  until krill_port_open 127.0.0.1 "$port"; do
    ((SECONDS < deadline)) || krill_die "$node does not answer on port $port"
    sleep 1
  done
}

# krill_cluster_kill N: SIGKILLs node N's Erlang VM (a crash, not a stop).
krill_cluster_kill() {
  local pid
  pid="$(krill_cluster_pid "$1")"
  if [[ -z "$pid" ]]; then
    krill_log "$(krill_cluster_node "$1") is not running"
    return 0
  fi
  krill_log "SIGKILL $(krill_cluster_node "$1") (pid $pid)"
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == beam.smp ]]; do
    sleep 0.2
  done
}

# krill_cluster_stop N: stops node N cleanly (a rolling restart's step).
krill_cluster_stop() {
  krill_cluster_ctl "$1" 60 stop >/dev/null || krill_cluster_kill "$1"
}

# krill_cluster_up: a fresh cluster (data of an earlier run removed): starts
# the three nodes, joins 2 and 3 to 1, and prints the URLs on stdout.
krill_cluster_up() {
  local n dir
  krill_cluster_down
  krill_cluster_prepare
  dir="$(krill_cluster_dir)"
  for n in 1 2 3; do
    rm -rf "${dir:?}/c$n/mnesia" "${dir:?}/c$n/log"
    krill_cluster_start "$n"
  done
  for n in 2 3; do
    krill_log "joining $(krill_cluster_node "$n") to $(krill_cluster_node 1)"
    krill_cluster_ctl "$n" 60 stop_app >/dev/null || krill_die "stop_app on node $n failed"
    krill_cluster_ctl "$n" 60 join_cluster "$(krill_cluster_node 1)" >/dev/null ||
      krill_die "node $n did not join the cluster (logs in $dir/c$n/log)"
    krill_cluster_ctl "$n" 60 start_app >/dev/null || krill_die "start_app on node $n failed"
  done
  krill_cluster_ctl 1 60 await_online_nodes 3 >/dev/null || krill_die "the cluster did not reach 3 nodes"
  krill_log "cluster of 3 nodes ready: $(krill_cluster_urls)"
  krill_cluster_urls
  echo
}

# krill_cluster_down: stops every node of the cluster (SIGKILL for those that
# do not stop within a minute). Data stays until the next `up`.
krill_cluster_down() {
  local n
  for n in 1 2 3; do
    if [[ -n "$(krill_cluster_pid "$n")" ]]; then
      krill_log "stopping $(krill_cluster_node "$n")"
      krill_cluster_stop "$n"
    fi
  done
}

# ------------------------------------------------------------------- keys --

# krill_ensure_keys KRILL_BIN ETC_DIR: the local user's signing key (KRILL_KEY,
# else ~/.config/krill/key; made when missing), the pool's key pair
# ETC_DIR/pool.key (+ .pub, also copied to ~/.config/krill/pool.pub where the
# CLI finds it) and ETC_DIR/trusted-keys listing the user's key with the control
# right. Idempotent: existing keys are kept, the user's line is added once.
# Sets KRILL_UP_KEY to the user's key file.
krill_ensure_keys() {
  local krill=$1 etc=$2
  local keydir="${XDG_CONFIG_HOME:-$HOME/.config}/krill"
  local key="${KRILL_KEY:-$keydir/key}"
  if [[ ! -f $key ]]; then
    krill_log "making your signing key: $key"
    "$krill" keys new --out "$key" >/dev/null || krill_die "krill keys new failed"
  fi
  install -d -m 0755 "$etc"
  if [[ ! -f $etc/pool.key ]]; then
    krill_log "making the pool's key pair: $etc/pool.key (+ .pub)"
    "$krill" keys new-pool --out "$etc/pool.key" >/dev/null || krill_die "krill keys new-pool failed"
  fi
  install -d -m 0700 "$keydir"
  install -m 0644 "$etc/pool.key.pub" "$keydir/pool.pub"
  local line
  line="$("$krill" --key "$key" keys show 2>/dev/null)" || krill_die "cannot read $key"
  local trusted=$etc/trusted-keys
  if ! grep -qF -- "$(cut -d' ' -f1-2 <<<"$line")" "$trusted" 2>/dev/null; then
    krill_log "trusting your key in $trusted (with the control right)"
    if [[ ! -f $trusted ]]; then
      printf '# Keys whose signed tasks this pool runs: type, public key, name, restrictions.\n' >"$trusted"
    fi
    printf '%s control\n' "$line" >>"$trusted"
  fi
  KRILL_UP_KEY=$key
}

# krill_ensure_chromium: headless Chromium and its WebDriver for the web view's browser test
# (tests/tests/web.rs starts chromedriver itself on a free port).
krill_ensure_chromium() {
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && return 0
  krill_apt_install chromium chromium-driver
  command -v chromedriver >/dev/null 2>&1 ||
    krill_die "chromium-driver is installed but chromedriver is not on PATH"
}

# krill_ensure_firefox: headless Firefox ESR (apt) and geckodriver, its WebDriver,
# for the same browser test in Firefox. Debian packages no geckodriver: it is
# built from crates.io (a debug build, ~2 CPU-minutes, once per machine: it
# goes to cargo's bin directory, ~/.cargo/bin, and is kept there).
# KRILL_GECKODRIVER_VERSION pins the version (the one the test was run with).
krill_ensure_firefox() {
  command -v firefox-esr >/dev/null 2>&1 || command -v firefox >/dev/null 2>&1 ||
    krill_apt_install firefox-esr
  command -v geckodriver >/dev/null 2>&1 && return 0
  local ver="${KRILL_GECKODRIVER_VERSION:-0.37.1}" log=/var/log/krill-geckodriver.log
  krill_log "building geckodriver $ver from crates.io (debug; log: $log)"
  if ! CARGO_TARGET_DIR="${TMPDIR:-/tmp}/krill-geckodriver-build" \
    cargo install --locked --debug --quiet geckodriver --version "$ver" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    krill_die "cargo install geckodriver failed (see $log)"
  fi
  rm -rf "${TMPDIR:-/tmp}/krill-geckodriver-build"
  command -v geckodriver >/dev/null 2>&1 ||
    krill_die "geckodriver was installed but is not on PATH (add cargo's bin directory, ~/.cargo/bin)"
}

# krill_ensure_postgres: PostgreSQL (Debian's `postgresql`) installed, a cluster
# running on 127.0.0.1:5432, a role `krill` (password `krill`, may create
# databases) and the database `krill_gateway_test` the gateway tests use (each
# test in a schema of its own). Exports KRILL_TEST_PG_URL.
krill_ensure_postgres() {
  krill_apt_install postgresql
  local ver
  ver="$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1)"
  [[ -n "$ver" ]] || krill_die "postgresql is installed but /usr/lib/postgresql has no version"
  if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
    krill_log "creating a PostgreSQL $ver cluster"
    pg_createcluster "$ver" main >/dev/null
  fi
  local cluster
  cluster="$(pg_lsclusters -h | awk 'NR==1 {print $1" "$2}')"
  if ! pg_lsclusters -h | awk 'NR==1 {print $4}' | grep -q online; then
    krill_log "starting PostgreSQL ($cluster)"
    # shellcheck disable=SC2086 # version and name are two words
    pg_ctlcluster $cluster start
  fi
  local i
  for i in $(seq 1 60); do
    krill_port_open 127.0.0.1 5432 && break
    sleep 0.5
  done
  krill_port_open 127.0.0.1 5432 || krill_die "PostgreSQL does not answer on 127.0.0.1:5432 (see /var/log/postgresql/)"
  # From /: the postgres user may not enter the caller's directory (a mktemp -d clone).
  local psql=(env -C / runuser -u postgres -- psql -qAtX -v ON_ERROR_STOP=1)
  if [[ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'krill'")" != 1 ]]; then
    "${psql[@]}" -c "CREATE ROLE krill LOGIN PASSWORD 'krill' CREATEDB" >/dev/null
  fi
  if [[ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'krill_gateway_test'")" != 1 ]]; then
    "${psql[@]}" -c "CREATE DATABASE krill_gateway_test OWNER krill" >/dev/null
  fi
  export KRILL_TEST_PG_URL="postgres://krill:krill@127.0.0.1:5432/krill_gateway_test"
}

# krill_ensure_net_tools: what a worker with --allow-network runs for each task
# with network (nftables' `nft`, iproute2's `ip`, util-linux's `nsenter`), and
# what tests/tests/network.rs uses for its "outside" host (`ip netns`).
krill_ensure_net_tools() {
  local want=()
  command -v nft >/dev/null 2>&1 || want+=(nftables)
  command -v ip >/dev/null 2>&1 || want+=(iproute2)
  command -v nsenter >/dev/null 2>&1 || want+=(util-linux)
  if ((${#want[@]})); then
    krill_apt_install "${want[@]}"
  fi
}
