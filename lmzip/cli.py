"""Command line: one click group; each command is a thin wrapper over one `lmzip.api` call.

Errors: an LmzipError (or an OSError on a user's file) prints one line `lmzip: error: ...` on
stderr and exits 1, without a traceback; usage errors exit 2 (click's convention).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import click

# Before torch loads OpenMP: spinning OpenMP waits make a busy 2-core machine up to 10x slower
# (measured); the entry point, not the library, decides this for the process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lmzip  # noqa: E402
from lmzip import container, cpu_env, describe  # noqa: E402
from lmzip.errors import LmzipError

cpu_env.prefer_512_bit_vectors()  # before numba loads (lmzip.api imports it)


class _Api:
    """lmzip.api, imported on first use: it loads torch (~1 s), which `--help`, usage errors and
    argument checks do not need."""

    def __getattr__(self, name: str):
        from lmzip import api as module

        return getattr(module, name)


api = _Api()


class LmzipGroup(click.Group):
    """Turns the errors a user can cause into one line and exit status 1, for every command."""

    def invoke(self, ctx: click.Context):
        # SIGTERM takes the same path as Ctrl-C, so that the temp output file is removed and
        # worker processes are stopped (the default action would kill us mid-write).
        main_thread = threading.current_thread() is threading.main_thread()
        sigs = (signal.SIGINT, signal.SIGTERM) if main_thread else ()
        previous = {s: signal.signal(s, _interrupt) for s in sigs}
        _INTERRUPTED.clear()
        try:
            rv = super().invoke(ctx)
            sys.stdout.flush()  # here a reader that went away is caught below, not at exit
            return rv
        except LmzipError as e:
            _fail(ctx, str(e))
        except BrokenPipeError:  # the reader of stdout stopped (`lmzip info | head`): end
            # quietly with SIGPIPE's status, as other tools do; no file of ours is involved
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(128 + signal.SIGPIPE)
        except OSError as e:  # unreadable/unwritable user files; strerror is one line
            _fail(ctx, f"{e.filename}: {e.strerror}" if e.filename else str(e))
        except KeyboardInterrupt:
            _interrupted(ctx)
        except MemoryError:
            _fail(ctx, "out of memory (try a smaller --batch-size or --threads)")
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # noqa: BLE001  a bug, not the user's fault: still one line
            if _INTERRUPTED:  # a signal inside native code (numba) surfaces as a SystemError
                _interrupted(ctx)
            msg = str(e).splitlines()[0] if str(e) else ""
            _fail(ctx, f"internal error ({type(e).__name__}: {msg}); please report it")
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


_INTERRUPTED: list = []


def _interrupt(signum, frame) -> None:
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt


def _interrupted(ctx: click.Context) -> None:
    click.echo("lmzip: interrupted; no output written", err=True)
    ctx.exit(130)


def _fail(ctx: click.Context, message: str) -> None:
    # one line even when a library's message (sentencepiece, zstd) spans several
    click.echo("lmzip: error: " + " ".join(message.split("\n")), err=True)
    ctx.exit(1)


@click.group(
    cls=LmzipGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="\b\nExample:\n  lmzip info model.lmzm",
)
@click.version_option(lmzip.__version__, prog_name="lmzip")
def main() -> None:
    """lmzip: lossless compression with a small language model."""


def _print_text(d: dict, indent: str = "") -> None:
    for key, value in d.items():
        if isinstance(value, dict):
            click.echo(f"{indent}{key}:" + ("" if value else " {}"))
            _print_text(value, indent + "  ")
        elif key == "tensors":  # the full list is in --json; a line per tensor would drown it
            click.echo(f"{indent}{key}: {len(value)}")
        else:
            click.echo(f"{indent}{key}: {value}")


def _file_or_shipped_model(ctx, param, value):
    """An existing file, or the name of a model shipped with lmzip (a usage error otherwise)."""
    if value is None or os.path.exists(value) or value in container.shipped_models():
        return value
    raise click.BadParameter(f"File '{value}' does not exist (nor is it a shipped model's name).")


@main.command(epilog="\b\nExample:\n  lmzip info model.lmzm --json\n  lmzip info notes.txt.lmz")
@click.argument("file", required=False, type=click.Path(dir_okay=False),
                callback=_file_or_shipped_model)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(file: str | None, as_json: bool) -> None:
    """Print the header fields of a model (.lmzm) or compressed (.lmz) FILE.

    Without FILE, describe the default model shipped with lmzip. FILE may also be the name of
    a shipped model (the "shipped_models" field of the default model's description lists them).
    """
    d = describe.info(file)
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        _print_text(d)


class _Progress:
    """Bytes done and KB/s on stderr, only for a terminal and without -q."""

    def __init__(self, total: int | None, quiet: bool, verb: str):
        self.on = not quiet and sys.stderr.isatty()
        self.total, self.done, self.verb, self.t0 = total, 0, verb, time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.on:
            return
        dt = max(1e-9, time.monotonic() - self.t0)
        pct = f" {100 * self.done / self.total:5.1f}%" if self.total else ""
        click.echo(f"\r{self.verb}{pct} {self.done / 1e6:8.2f} MB {self.done / 1e3 / dt:8.1f} KB/s",
                   err=True, nl=False)  # fmt: skip

    def close(self) -> None:
        if self.on and self.done:
            click.echo("", err=True)


def _size(path: str) -> int | None:
    return os.path.getsize(path) if path != "-" and os.path.isfile(path) else None


_coding_options = [
    click.option("-m", "--model", type=click.Path(dir_okay=False),
                 help="Model container (.lmzm), or the name of a model shipped with lmzip "
                 "(`lmzip info` lists them). Default: the shipped default model; decompress "
                 "uses the shipped model the file was made with."),
    click.option("--threads", type=click.IntRange(0, 256), default=0, show_default=True,
                 help="Worker processes (0 = one per core). Changes speed only, never bytes."),
    click.option("--batch-size", type=click.IntRange(1, 4096), default=lmzip.DEFAULT_BATCH,
                 show_default=True, help="Chunks coded together as a batch of streams. "
                 "Changes speed and memory only, never bytes."),
    click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file."),
    click.option("-q", "--quiet", is_flag=True, help="No progress on stderr."),
]  # fmt: skip


def coding_options(fn):
    for opt in reversed(_coding_options):
        fn = opt(fn)
    return fn


@main.command(epilog="\b\nExamples:\n  lmzip compress notes.txt            # writes notes.txt.lmz\n"
              "  cat notes.txt | lmzip compress - > notes.txt.lmz")  # fmt: skip
@click.argument("input", type=click.Path(allow_dash=True))
@click.option("-o", "--output", type=click.Path(allow_dash=True),
              help="Output file, '-' for stdout. Default: INPUT.lmz.")  # fmt: skip
@coding_options
@click.option("--lm-only", is_flag=True,
              help="Code with the language model alone (no adaptive mixing).")  # fmt: skip
@click.option("--chunk-size", type=click.IntRange(1024, 64 << 20), default=None,
              help="Input bytes per chunk (two chunks form a group that shares the mixer's "
              "tables and decodes on two cores). Default: half the input, 32 KiB-4 MiB "
              "(1 MiB for a pipe).")  # fmt: skip
def compress(input, output, model, threads, batch_size, force, quiet, lm_only, chunk_size):
    """Compress INPUT ('-' for stdin) into an .lmz file. The input is kept."""
    output = output or api.default_output(input, decompress=False)
    opts = api.CodingOptions(threads, batch_size, chunk_size or 0, lm_only=lm_only)
    prog = _Progress(_size(input), quiet, "compress")
    try:
        api.compress_file(input, output, model, opts, force, prog)
    finally:
        prog.close()


@main.command(epilog="\b\nExamples:\n  lmzip decompress notes.txt.lmz      # writes notes.txt\n"
              "  lmzip decompress --test notes.txt.lmz")  # fmt: skip
@click.argument("input", type=click.Path(allow_dash=True))
@click.option("-o", "--output", type=click.Path(allow_dash=True),
              help="Output file, '-' for stdout. Default: INPUT without .lmz.")  # fmt: skip
@coding_options
@click.option("-t", "--test", is_flag=True, help="Decode and verify only; write nothing.")
def decompress(input, output, model, threads, batch_size, force, quiet, test):
    """Decompress an .lmz file INPUT ('-' for stdin) and verify every checksum."""
    if not test:
        output = output or api.default_output(input, decompress=True)
    opts = api.CodingOptions(threads, batch_size)
    prog = _Progress(None, quiet, "decompress")
    try:
        api.decompress_file(input, None if test else output, model, opts, force, prog)
    finally:
        prog.close()
    if test and not quiet:
        click.echo(f"{input}: OK", err=True)


@main.command(
    epilog="\b\nExample:\n  lmzip verify --json notes.txt docs.jsonl fineweb_val_000000.bin"
)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-m", "--model", type=click.Path(dir_okay=False),
              help="Model container (.lmzm) or a shipped model's name. Default: the shipped "
              "default model.")  # fmt: skip
@click.option("--threads", type=click.IntRange(0, 256), default=0, show_default=True,
              help="Worker processes (0 = one per core).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--no-roundtrip", is_flag=True,
              help="Measure sizes only; skip decompressing (much faster).")  # fmt: skip
@click.option("--chunk-size", type=click.IntRange(1024, 64 << 20), default=None,
              help="Input bytes per chunk (two chunks form a group that shares the mixer's "
              "tables and decodes on two cores). Default: half the input, 32 KiB-4 MiB "
              "(1 MiB for a pipe).")  # fmt: skip
def verify(files, model, threads, as_json, no_roundtrip, chunk_size):
    """Compress and decompress each FILE and compare the model's bits per byte with real bytes.

    \b
    model_bpb   float reference model (dequantized weights) over the same bytes
                (--json adds model_bpb_golf, with the Parameter Golf byte rule)
    engine_bpb  ideal code length of the exact engine's tables (language model alone)
    mixed_bpb   coded size of the model mixed with the adaptive models (payloads only)
    real_bpb    8 x .lmz file bytes / input bytes (default mode); real_bpb_lm_only: --lm-only
    FILE may be text/bytes, .jsonl (a "text" field per line) or a Parameter Golf .bin shard.
    """
    opts = api.CodingOptions(threads=threads, chunk_size=chunk_size or 0)
    result = api.verify(list(files), model, opts, roundtrip=not no_roundtrip)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    cols = ["bytes", "tokens", "model_bpb", "engine_bpb", "mixed_bpb", "real_bpb",
            "real_bpb_lm_only", "roundtrip_ok"]  # fmt: skip
    click.echo("file\t" + "\t".join(cols))
    for row in result["files"] + [dict(result["total"], file="TOTAL")]:
        vals = [f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        click.echo(row["file"] + "\t" + "\t".join(vals))
    if result["total"]["roundtrip_ok"] is False:
        raise LmzipError("round trip FAILED")
