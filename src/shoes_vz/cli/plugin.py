"""`shoes-vz plugin …`: install the myshoes plugin file, check it, call it like myshoes does."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, cast

import typer

from shoes_vz.cli.console import fail
from shoes_vz.cli.options import choice
from shoes_vz.core.errors import ShoesVzError

if TYPE_CHECKING:
    from shoes_vz.wire import myshoes_pb2

plugin_app = typer.Typer(help="The myshoes plugin (shoes-vz-plugin): install, check, call.", no_args_is_help=True)
call_app = typer.Typer(help="Launch the plugin once per call, as myshoes does, and print the answer as JSON.")
plugin_app.add_typer(call_app, name="call")

PluginOpt = Annotated[Path, typer.Option("--plugin", help="plugin file (from `plugin install`)")]


def register(app: typer.Typer) -> None:
    app.add_typer(plugin_app, name="plugin")


@plugin_app.command()
def install(
    output: Annotated[Path, typer.Option("--output", "-o", help="file to write; point myshoes' PLUGIN at it")],
    interpreter: Annotated[
        str | None, typer.Option(help="Python to run it with (default: this one)")
    ] = None,
) -> None:
    """Write the plugin as an executable zipapp that passes myshoes' binary check."""
    from shoes_vz.plugin.install import InstallError, install_plugin
    from shoes_vz.plugin.sniff import sniff_file

    try:
        path = install_plugin(output, interpreter=interpreter)
    except InstallError as e:
        raise fail(e) from None
    typer.echo(f"wrote {path} ({sniff_file(path)}); set PLUGIN={path} for myshoes")


@plugin_app.command()
def serve() -> None:
    """Run the plugin in this process (what the installed file does; needs the go-plugin environment)."""
    from shoes_vz.plugin.main import main

    raise typer.Exit(main([]))


@plugin_app.command()
def sniff(files: Annotated[list[Path], typer.Argument(help="files to classify")]) -> None:
    """Print Go's http.DetectContentType for each file (myshoes needs application/octet-stream)."""
    from shoes_vz.plugin.sniff import sniff_file

    for f in files:
        typer.echo(f"{f}: {sniff_file(f)}")


def _plugin_file(plugin: Path) -> Path:
    """The plugin as an absolute path (`./shoes-vz-plugin` must not turn into a PATH lookup)."""
    path = plugin.expanduser().absolute()
    if not path.is_file():
        raise ShoesVzError(f"no plugin file at {path}: make one with `shoes-vz plugin install -o {plugin}`")
    if not os.access(path, os.X_OK):
        raise ShoesVzError(f"{path} is not executable: chmod +x it, or reinstall with `shoes-vz plugin install`")
    return path


def _call(plugin: Path, method: str, request: object, timeout: float) -> None:
    """One call through a fresh plugin process; the plugin's log (stderr) is shown after the answer."""
    import grpc

    from shoes_vz.plugin.host import PluginProcess, PluginStartError, host_env
    from shoes_vz.plugin.settings import PluginSettings

    env = host_env()
    PluginSettings.from_env(env)  # what the plugin would refuse, said here in one line
    out: dict[str, object] = {"method": method}
    with tempfile.TemporaryFile() as log:
        try:
            with PluginProcess.launch(_plugin_file(plugin), env, stderr=log.fileno()) as proc:
                out["handshake_ms"] = round(proc.handshake_s * 1000, 1)
                try:
                    resp = getattr(proc.shoes(), method)(request, timeout=timeout)
                    out["code"] = "OK"
                    from google.protobuf.json_format import MessageToDict

                    out["response"] = MessageToDict(resp, preserving_proto_field_name=True)
                except grpc.RpcError as e:
                    out["code"], out["error"] = e.code().name, e.details()
        except PluginStartError as e:
            raise ShoesVzError(f"the plugin did not start: {e}{_last_line(log)}") from None
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace"))
    out["kill_ms"] = round((proc.kill_s or 0) * 1000, 1)
    typer.echo(json.dumps(out))
    if out["code"] != "OK":
        raise typer.Exit(1)


def _last_line(log: IO[bytes]) -> str:
    log.seek(0)
    lines = [ln.strip() for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
    return f": {lines[-1]}" if lines else ""


def _resource_type(value: str) -> myshoes_pb2.ResourceType:
    """myshoes' enum name (Small), its own name (small, 2xlarge) or upstream's (xlarge2)."""
    from shoes_vz.core.resources import ALIASES
    from shoes_vz.plugin.forward import NAME_TO_ENUM
    from shoes_vz.wire import myshoes_pb2

    valid = {name: name for name in myshoes_pb2.ResourceType.keys()}
    valid |= {n: myshoes_pb2.ResourceType.Name(v) for n, v in NAME_TO_ENUM.items()}
    valid |= {alias: valid[name] for alias, name in ALIASES.items()}
    try:
        return cast(myshoes_pb2.ResourceType, myshoes_pb2.ResourceType.Value(choice(value, valid, "a resource type")))
    except typer.BadParameter:
        raise typer.BadParameter(f"{value!r} is not a myshoes resource type; valid: "
                                 f"{', '.join(myshoes_pb2.ResourceType.keys())} (or myshoes' names: "
                                 f"{', '.join(NAME_TO_ENUM)})", param_hint="'--resource-type'") from None


@call_app.command("add")
def call_add(
    plugin: PluginOpt,
    runner_name: Annotated[str, typer.Option(help="runner_name (myshoes: myshoes-<job uuid>)")],
    resource_type: Annotated[str, typer.Option(
        help="myshoes enum name (Unknown, Nano … XLarge4) or myshoes' own (nano … 4xlarge)")] = "Unknown",
    labels: Annotated[str, typer.Option(help="comma-separated runs-on labels")] = "",
    setup_script: Annotated[Path | None, typer.Option(
        help="file with the setup_script (- for stdin); none: an empty script")] = None,
    timeout: Annotated[float, typer.Option(help="the call's deadline, seconds (myshoes gives 300)")] = 300.0,
) -> None:
    """AddInstance through a fresh plugin process."""
    from shoes_vz.wire import myshoes_pb2

    rt = _resource_type(resource_type)
    script = ""
    if setup_script is not None:
        script = sys.stdin.read() if str(setup_script) == "-" else setup_script.read_text()
    request = myshoes_pb2.AddInstanceRequest(
        runner_name=runner_name, setup_script=script, resource_type=rt,
        labels=[label for label in labels.split(",") if label],
    )
    _call(plugin, "AddInstance", request, timeout)


@call_app.command("delete")
def call_delete(
    plugin: PluginOpt,
    cloud_id: Annotated[str, typer.Option(help="cloud_id AddInstance returned")],
    labels: Annotated[str, typer.Option(help="comma-separated labels")] = "",
    timeout: Annotated[float, typer.Option(help="the call's deadline, seconds")] = 60.0,
) -> None:
    """DeleteInstance through a fresh plugin process (NOT_FOUND exits 1 but means: already gone)."""
    from shoes_vz.wire import myshoes_pb2

    request = myshoes_pb2.DeleteInstanceRequest(
        cloud_id=cloud_id, labels=[label for label in labels.split(",") if label]
    )
    _call(plugin, "DeleteInstance", request, timeout)
