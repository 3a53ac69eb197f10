"""Whether a Nomad node can run a job: Nomad's feasibility checks, as pure functions.

Used by the Nomad stand-in (`tests/nomad_fake.py`) to place allocations, and by tests that
assert a job (a benchmark job, the service jobs under `deploy/nomad/`) is placeable on the
nodes that `vlab host init` configures:

    nodes = nodes_from_client_config({"alpha": out_dir / "nomad-client.hcl"})
    assert feasibility(json.loads(Path("deploy/nomad/vlab-api.json").read_text()),
                       nodes[0]) is None

Nodes are dicts shaped like Nomad's `api.Node` (`Name`, `NodePool`, `Datacenter`, `Meta`,
`Attributes`, `HostVolumes`, `Drivers`, `NodeResources`, `ReservedResources`), built from the
HCL client configuration that `vlab host init` writes. Nomad does not publish a client's
plugin configuration; the stand-in keeps the docker plugin's under `PluginConfig`.

What is checked, in the order of Nomad's generic scheduler stack
(`scheduler/feasible/{feasible.go,stack.go,rank.go}`), with Nomad's reason strings:

- node pool (`Job.NodePool`, "all" takes any node) and datacenter (`Job.Datacenters`, globs):
  Nomad does not evaluate nodes outside them at all (`NodesInPool`); the reason here says so;
- node status and scheduling eligibility;
- job, group and task constraints: the reason is the constraint as Nomad prints it,
  `"${meta.vlab_role} = full"`; operands `=`/`==`/`is`, `!=`/`not`, `<` `<=` `>` `>=`,
  `regexp`, `is_set`, `is_not_set`, `set_contains`(`_all`/`_any`), `version`/`semver`
  (comparisons only); `${node.unique.id}`, `${node.unique.name}`, `${node.datacenter}`,
  `${node.class}`, `${node.pool}`, `${attr.*}`, `${meta.*}` interpolated, anything else unset;
- drivers: `"missing drivers"`;
- host volumes: `"missing compatible host volumes"` (absent, or read-only for a writer);
- host networks: `missing host network "public" for port "https"`;
- resources: memory and CPU left on the node (`used_mb`/`used_cpu` of running allocations):
  `'dimension "memory" exhausted'` (Nomad's `DimensionExhausted` key is the bare `"memory"`);
- with `driver_checks` (default), the docker driver's own refusals, which real Nomad reports
  only when the task starts (a "Driver Failure" event, not a placement failure):
  `cap_add` outside `allow_caps`, `privileged` without `allow_privileged`, host-path `volumes`
  without `volumes { enabled = true }`.

Not modelled: devices, CSI volumes, networks and ports, spreads and affinities (scores only),
`distinct_hosts`/`distinct_property` (they compare a job's own allocations).
"""

from __future__ import annotations

import fnmatch
import json
import platform
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The docker driver's default `allow_caps` (drivers/docker/config.go, capabilities.NomadDefaults).
DOCKER_DEFAULT_CAPS = ("audit_write", "chown", "dac_override", "fowner", "fsetid", "kill",
                       "mknod", "net_bind_service", "setfcap", "setgid", "setpcap", "setuid",
                       "sys_chroot")
NODE_MEMORY_MB = 8192  # what the stand-in fingerprints when the configuration does not say
NODE_CPU_MHZ = 8000
DEFAULT_TASK_MEMORY_MB = 300  # api/resources.go defaults
DEFAULT_TASK_CPU = 100

# Reason kinds, which the stand-in turns into an evaluation's AllocMetric fields.
POOL = "pool"  # not in the job's node pool or datacenters: not evaluated (NodesInPool)
FILTERED = "filtered"  # ConstraintFiltered[reason]
EXHAUSTED = "exhausted"  # DimensionExhausted[dimension]
DRIVER = "driver"  # placed, but the task driver refuses the task when it starts


@dataclass(frozen=True)
class Verdict:
    kind: str
    reason: str
    dimension: str = ""  # for EXHAUSTED: Nomad's dimension name ("memory", "cpu")


# -- the client configuration (HCL) ------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.-]*)
  | (?P<punct>[={}\[\],:])
""", re.VERBOSE | re.DOTALL)


def _tokens(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"HCL: unexpected {text[position:position + 20]!r}")
        position = match.end()
        kind = match.lastgroup
        value: Any = match.group()
        if kind == "ws":
            continue
        if kind == "string":
            value = json.loads(value)  # HCL's escapes are JSON's
        elif kind == "number":
            value = float(value) if "." in value else int(value)
        elif kind == "ident" and value in ("true", "false"):
            kind, value = "bool", value == "true"
        tokens.append((kind or "", value))
    return tokens


class _Parser:
    """The HCL subset of Nomad agent files: attributes, blocks with labels, lists, maps."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self) -> tuple[str, Any]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("eof", None)

    def take(self, kind: str | None = None, value: Any = None) -> Any:
        token = self.peek()
        if (kind and token[0] != kind) or (value is not None and token[1] != value):
            raise ValueError(f"HCL: expected {value or kind}, found {token[1]!r}")
        self.at += 1
        return token[1]

    def body(self, closing: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            kind, value = self.peek()
            if kind == "eof" and closing is None:
                return out
            if kind == "punct" and value == closing:
                self.take()
                return out
            key = self.take()
            if not isinstance(key, str):
                raise ValueError(f"HCL: expected a name, found {key!r}")
            if self.peek() == ("punct", "="):
                self.take()
                out[key] = self.value()
                continue
            labels = []
            while self.peek()[0] in ("string", "ident"):
                labels.append(self.take())
            self.take("punct", "{")
            block = self.body("}")
            path = [key, *labels]
            target = out
            for label in path[:-1]:
                target = target.setdefault(label, {})
            last = path[-1]
            if isinstance(target.get(last), dict):
                target[last].update(block)  # repeated blocks merge, like Nomad's config merge
            else:
                target[last] = block

    def value(self) -> Any:
        kind, value = self.peek()
        if kind == "punct" and value == "[":
            self.take()
            items = []
            while self.peek() != ("punct", "]"):
                items.append(self.value())
                if self.peek() == ("punct", ","):
                    self.take()
            self.take()
            return items
        if kind == "punct" and value == "{":
            self.take()
            mapping: dict[str, Any] = {}
            while self.peek() != ("punct", "}"):
                key = self.take()
                self.take("punct", "=" if self.peek() == ("punct", "=") else ":")
                mapping[str(key)] = self.value()
                if self.peek() == ("punct", ","):
                    self.take()
            self.take()
            return mapping
        if kind in ("string", "number", "bool"):
            return self.take()
        raise ValueError(f"HCL: expected a value, found {value!r}")


def parse_hcl(text: str) -> dict[str, Any]:
    """A Nomad agent configuration as nested dicts: `plugin "docker" { config {...} }` becomes
    `{"plugin": {"docker": {"config": {...}}}}`, `host_volume "x" {...}` under `client`
    becomes `{"client": {"host_volume": {"x": {...}}}}`."""
    return _Parser(text).body(None)


def node_from_client_config(text: str, name: str, *, datacenter: str = "dc1",
                            memory_mb: int = NODE_MEMORY_MB, cpu_mhz: int = NODE_CPU_MHZ,
                            drivers: Iterable[str] = ("docker",),
                            address: str = "127.0.0.1") -> dict[str, Any]:
    """The node a Nomad client with this configuration registers (`name` is its hostname,
    `memory_mb`/`cpu_mhz` what it would fingerprint; the configuration overrides them)."""
    config = parse_hcl(text)
    client = config.get("client") or {}
    plugins = config.get("plugin") or {}
    docker = (plugins.get("docker") or {}).get("config") or {}
    reserved = client.get("reserved") or {}
    memory_mb = int(client.get("memory_total_mb") or memory_mb)
    cpu_mhz = int(client.get("cpu_total_compute") or cpu_mhz)
    driver_names = list(drivers)
    if ((plugins.get("raw_exec") or {}).get("config") or {}).get("enabled"):
        driver_names.append("raw_exec")
    attributes = {"kernel.name": "linux", "os.name": "debian", "cpu.arch": platform.machine(),
                  "unique.hostname": name, "unique.network.ip-address": address,
                  "nomad.version": "1.8.4", "cpu.totalcompute": str(cpu_mhz),
                  "memory.totalbytes": str(memory_mb * 2**20)}
    for driver in driver_names:
        attributes[f"driver.{driver}"] = "1"
    volumes_enabled = bool((docker.get("volumes") or {}).get("enabled", False))
    if "docker" in driver_names:
        attributes["driver.docker.volumes.enabled"] = "1" if volumes_enabled else "0"
        if docker.get("allow_privileged"):
            attributes["driver.docker.privileged.enabled"] = "1"
    return {
        "ID": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
        "Name": str(client.get("node_name") or config.get("name") or name),
        "Datacenter": str(config.get("datacenter") or datacenter),
        "NodeClass": str(client.get("node_class") or ""),
        "NodePool": str(client.get("node_pool") or "default"),
        "Status": "ready",
        "SchedulingEligibility": "eligible",
        "Attributes": attributes,
        "Meta": {str(k): str(v) for k, v in (client.get("meta") or {}).items()},
        "HostNetworks": {net: {"Name": net, "Interface": str(spec.get("interface", "")),
                               "CIDR": str(spec.get("cidr", ""))}
                         for net, spec in (client.get("host_network") or {}).items()},
        "HostVolumes": {vol: {"Name": vol, "Path": str(spec.get("path", "")),
                              "ReadOnly": bool(spec.get("read_only", False))}
                        for vol, spec in (client.get("host_volume") or {}).items()},
        "Drivers": {driver: {"Detected": True, "Healthy": True} for driver in driver_names},
        "NodeResources": {"Memory": {"MemoryMB": memory_mb}, "Cpu": {"CpuShares": cpu_mhz}},
        "ReservedResources": {"Memory": {"MemoryMB": int(reserved.get("memory", 0))},
                              "Cpu": {"CpuShares": int(reserved.get("cpu", 0))}},
        "PluginConfig": {"docker": {
            "allow_caps": [str(c).lower() for c in docker.get("allow_caps",
                                                              DOCKER_DEFAULT_CAPS)],
            "allow_privileged": bool(docker.get("allow_privileged", False)),
            "volumes_enabled": volumes_enabled}},
    }


def nodes_from_client_config(configs: Mapping[str, str | Path], **options: Any
                             ) -> list[dict[str, Any]]:
    """One node per host: host name -> its client configuration, as HCL text, as the file
    `vlab host init` wrote, or as the `--out` directory holding `nomad-client.hcl`.
    `options` go to `node_from_client_config` for every node."""
    nodes = []
    for name, config in configs.items():
        if isinstance(config, Path):
            path = config / "nomad-client.hcl" if config.is_dir() else config
            config = path.read_text()
        nodes.append(node_from_client_config(config, name, **options))
    return nodes


# -- constraints -------------------------------------------------------------------------------

def resolve_target(target: str, node: Mapping[str, Any]) -> tuple[str, bool]:
    """`scheduler/feasible/feasible.go` resolveTarget: a literal, or a node property."""
    if not target.startswith("${"):
        return target, True
    fixed = {"${node.unique.id}": "ID", "${node.datacenter}": "Datacenter",
             "${node.unique.name}": "Name", "${node.class}": "NodeClass",
             "${node.pool}": "NodePool"}
    if target in fixed:
        return str(node.get(fixed[target], "")), True
    for prefix, field in (("${attr.", "Attributes"), ("${meta.", "Meta")):
        if target.startswith(prefix):
            key = target[len(prefix):].removesuffix("}")
            values = node.get(field) or {}
            return (str(values[key]), True) if key in values else ("", False)
    return "", False


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _order(operand: str, left: str, right: str) -> bool:
    a, b = _number(left), _number(right)
    pair: tuple[Any, Any] = (a, b) if a is not None and b is not None else (left, right)
    return {"<": pair[0] < pair[1], "<=": pair[0] <= pair[1], ">": pair[0] > pair[1],
            ">=": pair[0] >= pair[1]}[operand]


def _version(text: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"v?(\d+(?:\.\d+)*)(?:[-+].*)?", text.strip())
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def _version_match(left: str, constraint: str) -> bool:
    have = _version(left)
    if have is None:
        return False
    for part in constraint.split(","):
        match = re.fullmatch(r"\s*(>=|<=|!=|>|<|=|~>)?\s*(\S+)\s*", part)
        want = _version(match.group(2)) if match else None
        if match is None or want is None:
            return False
        op = match.group(1) or "="
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        if op == "~>":
            ok = a >= b and a[:len(want) - 1] == b[:len(want) - 1]
        else:
            ok = {"=": a == b, "!=": a != b, ">": a > b, ">=": a >= b, "<": a < b,
                  "<=": a <= b}[op]
        if not ok:
            return False
    return True


def _set(value: str) -> set[str]:
    return {item.strip() for item in value.split(",")}


def constraint_met(constraint: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """`checkConstraint` of Nomad's scheduler, for one constraint on one node."""
    operand = constraint.get("Operand") or "="
    left, l_ok = resolve_target(str(constraint.get("LTarget", "")), node)
    right, r_ok = resolve_target(str(constraint.get("RTarget", "")), node)
    if operand in ("distinct_hosts", "distinct_property"):
        return True
    if operand in ("=", "==", "is"):
        return l_ok and r_ok and left == right
    if operand in ("!=", "not"):
        return left != right
    if operand in ("<", "<=", ">", ">="):
        return l_ok and r_ok and _order(operand, left, right)
    if operand == "is_set":
        return l_ok
    if operand == "is_not_set":
        return not l_ok
    if operand in ("version", "semver"):
        return l_ok and r_ok and _version_match(left, right)
    if operand == "regexp":
        try:
            return l_ok and r_ok and re.search(right, left) is not None
        except re.error:
            return False
    if operand in ("set_contains", "set_contains_all"):
        return l_ok and r_ok and _set(right) <= _set(left)
    if operand == "set_contains_any":
        return l_ok and r_ok and bool(_set(right) & _set(left))
    return False


def constraint_text(constraint: Mapping[str, Any]) -> str:
    """How Nomad names a constraint in `ConstraintFiltered` (`structs.Constraint.String`)."""
    return f"{constraint.get('LTarget', '')} {constraint.get('Operand', '')} " \
           f"{constraint.get('RTarget', '')}"


# -- feasibility -------------------------------------------------------------------------------

def _job(job: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = job.get("Job")
    return inner if isinstance(inner, Mapping) else job


def group_memory_mb(group: Mapping[str, Any]) -> int:
    return sum(int((t.get("Resources") or {}).get("MemoryMB") or DEFAULT_TASK_MEMORY_MB)
               for t in group.get("Tasks") or [])


def group_cpu(group: Mapping[str, Any]) -> int:
    return sum(int((t.get("Resources") or {}).get("CPU") or DEFAULT_TASK_CPU)
               for t in group.get("Tasks") or [])


def in_pool(job: Mapping[str, Any], node: Mapping[str, Any]) -> str | None:
    """Why Nomad would not even evaluate the node for the job (None: it would)."""
    job = _job(job)
    pool = job.get("NodePool") or "default"
    if pool != "all" and node.get("NodePool", "default") != pool:
        return f'node pool "{node.get("NodePool", "default")}" is not the job\'s "{pool}"'
    datacenters = job.get("Datacenters") or ["*"]
    if not any(fnmatch.fnmatchcase(str(node.get("Datacenter", "")), dc) for dc in datacenters):
        return f'datacenter "{node.get("Datacenter")}" is not one of the job\'s ' \
               f'{", ".join(datacenters)}'
    return None


def driver_refusal(task: Mapping[str, Any], node: Mapping[str, Any]) -> str | None:
    """What the docker driver on `node` says when it refuses to start `task` (None: it
    starts it). Real Nomad reports it as a "Driver Failure" task event."""
    if task.get("Driver") != "docker":
        return None
    plugin = (node.get("PluginConfig") or {}).get("docker") or {}
    config = task.get("Config") or {}
    allowed = {c.lower().removeprefix("cap_")
               for c in plugin.get("allow_caps", DOCKER_DEFAULT_CAPS)}
    wanted = {str(c).lower().removeprefix("cap_") for c in config.get("cap_add") or []}
    if "all" not in allowed and wanted - allowed:
        return "driver does not allow the following capabilities: " + \
            ", ".join(sorted(wanted - allowed))
    if config.get("privileged") and not plugin.get("allow_privileged", False):
        return "Docker privileged mode is disabled on this Nomad agent"
    if config.get("volumes") and not plugin.get("volumes_enabled", False):
        return "volumes are not enabled; cannot mount host paths: " + \
            ", ".join(str(v) for v in config["volumes"])
    return None


def check_group(job: Mapping[str, Any], group: Mapping[str, Any], node: Mapping[str, Any], *,
                used_mb: int = 0, used_cpu: int = 0, driver_checks: bool = True
                ) -> Verdict | None:
    """The first reason the node cannot run one task group of the job, or None."""
    job = _job(job)
    pool = in_pool(job, node)
    if pool:
        return Verdict(POOL, pool)
    if node.get("Status", "ready") != "ready" or \
            node.get("SchedulingEligibility", "eligible") != "eligible":
        return Verdict(POOL, f"node is {node.get('Status')} and "
                             f"{node.get('SchedulingEligibility')}")
    for constraint in job.get("Constraints") or []:
        if not constraint_met(constraint, node):
            return Verdict(FILTERED, constraint_text(constraint))
    tasks = list(group.get("Tasks") or [])
    drivers = node.get("Drivers") or {}
    attributes = node.get("Attributes") or {}
    for task in tasks:
        driver = str(task.get("Driver", ""))
        info = drivers.get(driver)
        present = bool(info.get("Detected") and info.get("Healthy")) if info is not None \
            else attributes.get(f"driver.{driver}") in ("1", "true")
        if not present:
            return Verdict(FILTERED, "missing drivers")
    for constraint in [*(group.get("Constraints") or []),
                       *(c for t in tasks for c in t.get("Constraints") or [])]:
        if not constraint_met(constraint, node):
            return Verdict(FILTERED, constraint_text(constraint))
    host_volumes = node.get("HostVolumes") or {}
    for request in (group.get("Volumes") or {}).values():
        if request.get("Type") != "host":
            continue
        volume = host_volumes.get(request.get("Source"))
        if volume is None or (volume.get("ReadOnly") and not request.get("ReadOnly")):
            return Verdict(FILTERED, "missing compatible host volumes")
    # Ports bound to a named host network need that network on the node
    # (`scheduler/feasible/feasible.go` HostNetworkChecker).
    host_networks = node.get("HostNetworks") or {}
    for network in group.get("Networks") or []:
        for port in [*(network.get("ReservedPorts") or []),
                     *(network.get("DynamicPorts") or [])]:
            wanted = port.get("HostNetwork") or "default"
            if wanted != "default" and wanted not in host_networks:
                return Verdict(FILTERED,
                               f'missing host network "{wanted}" for port "{port["Label"]}"')
    resources = node.get("NodeResources") or {}
    reserved = node.get("ReservedResources") or {}
    free_mb = int((resources.get("Memory") or {}).get("MemoryMB", NODE_MEMORY_MB)) - \
        int((reserved.get("Memory") or {}).get("MemoryMB", 0)) - used_mb
    free_cpu = int((resources.get("Cpu") or {}).get("CpuShares", NODE_CPU_MHZ)) - \
        int((reserved.get("Cpu") or {}).get("CpuShares", 0)) - used_cpu
    if group_cpu(group) > free_cpu:
        return Verdict(EXHAUSTED, 'dimension "cpu" exhausted', "cpu")
    if group_memory_mb(group) > free_mb:
        return Verdict(EXHAUSTED, 'dimension "memory" exhausted', "memory")
    if driver_checks:
        for task in tasks:
            refusal = driver_refusal(task, node)
            if refusal:
                return Verdict(DRIVER, refusal)
    return None


def feasibility(job: dict[str, Any], node: dict[str, Any], *, used_mb: int = 0,
                used_cpu: int = 0, driver_checks: bool = True) -> str | None:
    """Why `node` cannot run `job` (the job, or its `{"Job": ...}` envelope), in Nomad's
    words; None if it can run every task group of it. `used_mb`/`used_cpu`: what running
    allocations already take on the node."""
    for group in _job(job).get("TaskGroups") or []:
        verdict = check_group(job, group, node, used_mb=used_mb, used_cpu=used_cpu,
                              driver_checks=driver_checks)
        if verdict is not None:
            return verdict.reason
    return None


def variable_readable(path: str, job_id: str, group: str, task: str) -> bool:
    """Nomad's implicit Variable ACL for a workload identity (`acl/acl.go`
    matchingVariablesCapabilitySet): read access to `nomad/jobs`, `nomad/jobs/<job>`,
    `nomad/jobs/<job>/<group>` and `nomad/jobs/<job>/<group>/<task>`, nothing else."""
    base = f"nomad/jobs/{job_id}"
    return path in ("nomad/jobs", base, f"{base}/{group}", f"{base}/{group}/{task}")
