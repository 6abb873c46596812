"""`shoes-vz plugin …`: install the myshoes plugin file, check it, call it like myshoes does."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, cast

import typer

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
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
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


def _call(plugin: Path, method: str, request: object) -> None:
    import grpc

    from shoes_vz.plugin.host import PluginProcess, host_env

    out: dict[str, object] = {"method": method}
    with PluginProcess.launch(plugin, host_env()) as proc:
        out["handshake_ms"] = round(proc.handshake_s * 1000, 1)
        try:
            resp = getattr(proc.shoes(), method)(request, timeout=300)
            out["code"] = "OK"
            from google.protobuf.json_format import MessageToDict

            out["response"] = MessageToDict(resp, preserving_proto_field_name=True)
        except grpc.RpcError as e:
            out["code"], out["error"] = e.code().name, e.details()
    out["kill_ms"] = round((proc.kill_s or 0) * 1000, 1)
    typer.echo(json.dumps(out))
    if out["code"] != "OK":
        raise typer.Exit(1)


@call_app.command("add")
def call_add(
    plugin: PluginOpt,
    runner_name: Annotated[str, typer.Option(help="runner_name (myshoes: myshoes-<job uuid>)")],
    resource_type: Annotated[str, typer.Option(help="myshoes enum name: Unknown, Nano … XLarge4")] = "Unknown",
    labels: Annotated[str, typer.Option(help="comma-separated runs-on labels")] = "",
    setup_script: Annotated[Path | None, typer.Option(help="file with the setup_script (- for stdin)")] = None,
) -> None:
    """AddInstance through a fresh plugin process."""
    from shoes_vz.wire import myshoes_pb2

    try:
        rt = myshoes_pb2.ResourceType.Value(resource_type)
    except ValueError:
        typer.echo(f"error: unknown resource type {resource_type!r}", err=True)
        raise typer.Exit(2) from None
    script = ""
    if setup_script is not None:
        script = sys.stdin.read() if str(setup_script) == "-" else setup_script.read_text()
    request = myshoes_pb2.AddInstanceRequest(
        runner_name=runner_name, setup_script=script, resource_type=cast(myshoes_pb2.ResourceType, rt),
        labels=[label for label in labels.split(",") if label],
    )
    _call(plugin, "AddInstance", request)


@call_app.command("delete")
def call_delete(
    plugin: PluginOpt,
    cloud_id: Annotated[str, typer.Option(help="cloud_id AddInstance returned")],
    labels: Annotated[str, typer.Option(help="comma-separated labels")] = "",
) -> None:
    """DeleteInstance through a fresh plugin process (NOT_FOUND exits 1 but means: already gone)."""
    from shoes_vz.wire import myshoes_pb2

    request = myshoes_pb2.DeleteInstanceRequest(
        cloud_id=cloud_id, labels=[label for label in labels.split(",") if label]
    )
    _call(plugin, "DeleteInstance", request)
