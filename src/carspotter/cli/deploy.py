"""Shipping a model: `export`, `bench-infer`, `serve`, `app`, `app-setup`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from carspotter.cli._app import _pct, app, console
from carspotter.errors import UserError


@app.command()
def export(
    ckpt: Annotated[Path, typer.Argument(help="A carspotter checkpoint (.ckpt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The exported file (.onnx or .pte).")],
    format_: Annotated[str, typer.Option("--format", help="onnx or executorch.")] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="ONNX: static int8 quantisation (needs --calib).")] = False,
    calib: Annotated[Path | None, typer.Option(help="Prepared dataset whose training images calibrate --int8.")] = None,
    data: Annotated[Path | None, typer.Option(help="Prepared dataset whose test images check the export "
                                                   "(default: the one the checkpoint was trained on).")] = None,
    embed_preprocessing: Annotated[bool, typer.Option(
        "--embed-preprocessing", help="ONNX: the model takes uint8 RGB pixels (N×H×W×3, any size) and resizes, "
                                      "scales and normalises them itself.")] = False,
    min_agreement: Annotated[float, typer.Option(
        "--min-agreement", min=0.0, max=1.0, help="--int8: fail below this top-1 agreement with PyTorch on the "
                                                  "check images.")] = 0.95,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file at --out (a link is replaced, never "
                                                 "written through).")] = False,
    check_random: Annotated[bool, typer.Option(help="Check the export on random images when no prepared dataset "
                                                    "is at hand (else the check needs real photos: --data).")] = False,
) -> None:
    """Export a checkpoint (self-describing ONNX fp32/int8, or ExecuTorch/XNNPACK) and check it against PyTorch."""
    if format_ == "onnx" and int8:
        if calib is None:
            raise UserError("--int8 needs --calib PREPARED (a prepared dataset whose training images calibrate it)")
        from carspotter.export.quantize import export as export_int8

        report = export_int8(ckpt, out, calib=calib, embed_preprocessing=embed_preprocessing,
                             min_agreement=min_agreement, overwrite=overwrite)
    elif format_ == "onnx":
        from carspotter.export.onnx import export as export_onnx

        report = export_onnx(ckpt, out, data=data, embed_preprocessing=embed_preprocessing, overwrite=overwrite,
                             random_check=check_random)
    elif format_ == "executorch":
        if int8 or embed_preprocessing:
            raise UserError("--int8 and --embed-preprocessing are for --format onnx; the ExecuTorch export is fp32")
        from carspotter.export.executorch import export as export_executorch

        report = export_executorch(ckpt, out, data=data, overwrite=overwrite, random_check=check_random)
    else:
        raise UserError(f"unknown --format {format_!r}; choose onnx or executorch")
    console.print(f"wrote {report.path} ({report.format}, {report.size_bytes / 1e6:.1f} MB)")
    a = report.agreement
    console.print(f"check against PyTorch on {report.check_source}: max |Δ logit| {a.max_abs_diff:.2e}, "
                  f"max |Δ probability| {a.max_prob_diff:.2e}, top-1 agreement {a.top1_agreement:.1%}")

@app.command("bench-infer")
def bench_infer(
    models: Annotated[list[Path], typer.Argument(help="The same model as .ckpt, .onnx (fp32/int8) and/or .pte.")],
    data: Annotated[Path | None, typer.Option(help="Prepared dataset: also report each format's top-1.")] = None,
    split: Annotated[str, typer.Option(help="test or train.")] = "test",
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for every runtime.")] = 1,
    repeats: Annotated[int, typer.Option(min=10, help="Timed batch-1 runs per format.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Batch-1 CPU latency (median, p90), throughput and, with --data, top-1 of each format, in one run."""
    from rich.table import Table

    from carspotter.inference.bench_infer import bench_infer as run_bench

    result = run_bench(models, data=data, split=split, threads=threads, runs=repeats)
    if as_json:
        print(json.dumps({"threads": result.threads, "runs": result.runs, "split": result.split,
                          "n": result.n_eval, "formats": [f.to_json() for f in result.formats]}, indent=2))
        return
    caption = f"img/s at batch {result.throughput_batch}" + (
        f"; top-1 on {result.n_eval} {result.split} images" if result.split is not None else "")
    table = Table(title=f"batch-1 CPU latency, {result.threads} thread(s), {result.runs} runs", caption=caption)
    for column in ("format", "median ms", "p90 ms", "× eager", "img/s", "MB"):
        table.add_column(column, justify="left" if column == "format" else "right", no_wrap=column == "format")
    if result.split is not None:
        table.add_column("top-1", justify="right")
    for f in result.formats:
        row = [f.label, f"{f.median_ms:.2f}", f"{f.p90_ms:.2f}", "n/a" if f.speedup is None else f"{f.speedup:.2f}",
               f"{f.throughput:.0f}", f"{f.size_mb:.1f}"]
        if result.split is not None:
            row.append(_pct(f.top1))
        table.add_row(*row)
    console.print(table, soft_wrap=False)

@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="An exported model (.onnx).")],
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    max_bytes: Annotated[int, typer.Option(help="Largest upload accepted, in bytes.")] = 10 * 1024 * 1024,
    max_pixels: Annotated[int | None, typer.Option(min=1, help="Largest image accepted, in pixels [default: "
                                                              "CARSPOTTER_MAX_PIXELS, else 40000000].")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="Another site allowed to call the "
                                                          "API from its pages, e.g. https://cars.example (repeat for "
                                                          "more); other sites' requests are refused.")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option("--allowed-host", help="Another name this server is "
                                                           "reached by (cars.example, *.cars.example; repeat for "
                                                           "more): requests naming any other Host are refused.")
                            ] = None,
) -> None:
    """A web page and JSON API (POST /api/predict, GET /healthz) that recognise a car from a photo (ONNX Runtime)."""
    import uvicorn

    from carspotter.serve.app import create_app
    from carspotter.serve.server import allowed_hosts, bind_socket, exit_cleanly_on_sigterm, host_name

    hosts = allowed_hosts(host, allowed_host or ())
    web_app = create_app(model, max_bytes=max_bytes, max_pixels=max_pixels, cors_origins=cors_origin or (),
                         allowed_hosts=hosts)
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    exit_cleanly_on_sigterm()
    console.print(f"serving {model} on http://{host_name(host)}:{bound_port}/ (Ctrl-C stops; answers Host "
                  f"{', '.join(hosts)})", soft_wrap=True)
    uvicorn.Server(uvicorn.Config(web_app, host=host, port=bound_port, log_level="info")).run(sockets=[sock])

@app.command("app")
def app_site(
    model: Annotated[Path, typer.Argument(help="An exported model (.onnx), with or without --embed-preprocessing.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The site folder to write (new, empty, or a site built "
                                                         "before, whose own files are replaced).")],
    title: Annotated[str, typer.Option(help="The app's name on the page and on the home screen.")] = "carspotter",
    overwrite: Annotated[bool, typer.Option(help="Write into a folder holding other files (they are kept).")
                         ] = False,
) -> None:
    """A static site that recognises cars on the phone itself: an installable PWA running the model in the browser
    (onnxruntime-web), offline after the first visit. Host the folder on any static web server."""
    from carspotter.serve.site import build_site

    site = build_site(model, out, title=title, overwrite=overwrite)
    wrapped = " (preprocessing graph added: the page feeds decoded pixels)" if site.wrapped else ""
    console.print(f"wrote {site.path}: {len(site.files)} files, {site.size_bytes / 1e6:.1f} MB{wrapped}")
    console.print(f"try it: python -m http.server -d {site.path} 8000, then open http://127.0.0.1:8000/")

@app.command("app-setup")
def app_setup() -> None:
    """Fetch onnxruntime-web, the app's in-browser runtime, once (npm ci of the pinned lock file; needs npm)."""
    from carspotter.serve.web_runtime import PACKAGE, install_runtime, pinned_version

    console.print(f"{PACKAGE} {pinned_version()} ready in {install_runtime()}")
