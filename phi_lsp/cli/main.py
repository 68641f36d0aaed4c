"""The `phi-lsp` command: the language server (default), and the pipelines from a terminal.

  phi-lsp [serve] [--tcp HOST:PORT]       the language server on stdio (or TCP, token required)
  phi-lsp review PATH...                  review files; `path:line:col: severity: message [...]`
  phi-lsp complete FILE:LINE:COL          one completion (1-based line and column)
  phi-lsp doctor                          what is configured, what answers, what to fix
  phi-lsp serve-model                     start the managed vLLM and wait
  phi-lsp demo                            a completion and a review of an example file
  phi-lsp stats                           acceptance, latency and routing figures
  phi-lsp trust [PATH]                    let PATH's pyproject.toml set backend.* and managed.*

Global flags (--backend-url, --model, --config, --log-file, -v) go before or after the command.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from phi_lsp import __version__
from phi_lsp.core import settings as config


def _global_flags(parser: argparse.ArgumentParser, in_subcommand: bool) -> None:
    # In subcommands the defaults are SUPPRESS so that a flag given before the command is kept.
    default = argparse.SUPPRESS if in_subcommand else None
    parser.add_argument("--backend-url", default=default, metavar="URL", help="OpenAI-compatible base URL ending in /v1")
    parser.add_argument("--model", default=default, metavar="NAME", help="served model name for completion and review")
    parser.add_argument("--config", default=default, metavar="FILE", help="a TOML file with phi-lsp settings")
    parser.add_argument("--log-file", default=default, metavar="FILE", help="write logs here instead of stderr")
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS if in_subcommand else 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi-lsp", description="AI completion and code review from Phi models, as a language server.")
    parser.add_argument("--version", action="version", version=f"phi-lsp {__version__}")
    # Many LSP clients pass --stdio by convention; stdio is the default anyway.
    parser.add_argument("--stdio", action="store_true", help=argparse.SUPPRESS)
    _global_flags(parser, in_subcommand=False)
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the language server (default)")
    serve.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP instead of stdio (port 0: any free port)")
    serve.add_argument("--tcp-token-file", metavar="FILE",
                       help="with --tcp: the token the client must present, read from FILE (mode 600); "
                            "else $PHI_LSP_TCP_TOKEN, else a new one printed on stderr")
    serve.add_argument("--stdio", action="store_true", default=argparse.SUPPRESS, help="use stdio (the default; accepted for editors that pass it)")
    _global_flags(serve, True)

    review = commands.add_parser("review", help="review files from the command line")
    review.add_argument("paths", nargs="+", metavar="PATH")
    review.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    review.add_argument("--fail-on", choices=("error", "warning", "info", "hint", "never"), default="never",
                        help="exit 1 when a finding at or above this severity exists")
    review.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    _global_flags(review, True)

    complete = commands.add_parser("complete", help="complete at FILE:LINE:COL (1-based)")
    complete.add_argument("location", metavar="FILE:LINE:COL")
    complete.add_argument("--format", choices=("text", "json"), default="text")
    _global_flags(complete, True)

    doctor = commands.add_parser("doctor", help="check configuration and backend")
    _global_flags(doctor, True)

    serve_model = commands.add_parser("serve-model", help="start the managed vLLM server and wait")
    serve_model.add_argument("--port", type=int, default=None)
    _global_flags(serve_model, True)

    demo = commands.add_parser("demo", help="complete and review an example file through the managed vLLM")
    demo.add_argument("--file", default=None, help="the file to use instead of the bundled example")
    _global_flags(demo, True)

    stats = commands.add_parser("stats", help="acceptance rate, latency, cache and escalation figures")
    stats.add_argument("--format", choices=("text", "json"), default="text")
    stats.add_argument("--days", type=int, default=None, help="only the last N days")
    _global_flags(stats, True)

    trust = commands.add_parser(
        "trust", help="trust a workspace folder: its pyproject.toml may then set backend.* and managed.*"
    )
    trust.add_argument("path", nargs="?", default=".", help="the folder (default: the current one)")
    trust.add_argument("--remove", action="store_true", help="stop trusting it")
    trust.add_argument("--list", action="store_true", help="list the trusted folders")
    _global_flags(trust, True)
    return parser


def setup_logging(verbose: int, log_file: str | None) -> None:
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    from phi_lsp.core.privacy import LogRedactor, remember_secret

    remember_secret(os.environ.get("PHI_LSP_API_KEY"))
    handler.addFilter(LogRedactor())  # API keys and secret-looking strings never reach a log
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pygls logs every message body at INFO; that is code, and noise. Only on -vv.
    logging.getLogger("pygls").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 130


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose or 0, args.log_file)
    command = args.command or "serve"
    if command == "serve":
        return run_server(args)
    from phi_lsp.core.privacy import MaskedStream

    # Whatever a command prints (findings, errors, doctor's report) goes out with every
    # configured key and URL credential masked.
    sys.stdout, sys.stderr = MaskedStream(sys.stdout), MaskedStream(sys.stderr)
    if command == "doctor":
        from phi_lsp.cli.doctor import run_doctor

        return asyncio.run(run_doctor(_cli_settings(args)))
    if command == "serve-model":
        return asyncio.run(_serve_model(args))
    if command == "review":
        from phi_lsp.cli.review import run_review

        return asyncio.run(run_review(_cli_settings(args), args.paths, args.format, args.fail_on, not args.no_progress))
    if command == "complete":
        from phi_lsp.cli.complete import run_complete

        return asyncio.run(run_complete(_cli_settings(args), args.location, args.format))
    if command == "demo":
        from phi_lsp.cli.demo import run_demo

        return asyncio.run(run_demo(_cli_settings(args), args.file))
    if command == "stats":
        from phi_lsp.cli.stats import run_stats

        return run_stats(args.format, args.days)
    if command == "trust":
        return run_trust(args.path, args.remove, args.list)
    raise AssertionError(command)


def run_trust(path: str, remove: bool, list_only: bool) -> int:
    from phi_lsp.core import trust

    if not list_only:
        folder = Path(path)
        if not folder.is_dir():
            print(f"phi-lsp trust: {path} is not a folder", file=sys.stderr)
            return 2
        folder = trust.set_trusted(folder, not remove)
        print(f"{'No longer trusted' if remove else 'Trusted'}: {folder}")
    for folder in trust.trusted_folders():
        print(f"  {folder}")
    return 0


def _cli_settings(args: argparse.Namespace) -> config.SettingsManager:
    manager = _load_cli_settings(args)
    from phi_lsp.core.privacy import remember_configured_secrets

    remember_configured_secrets(manager.settings)  # masked in all that the command prints
    return manager


def _load_cli_settings(args: argparse.Namespace) -> config.SettingsManager:
    manager = config.SettingsManager()
    problems = config.load_settings(
        manager, Path.cwd(), config_file=args.config, flags=config.from_flags(args.backend_url, args.model)
    )
    for problem in problems:
        print(f"phi-lsp: {problem}", file=sys.stderr)
    return manager


def run_server(args: argparse.Namespace) -> int:
    from phi_lsp.lsp.setup import create_server

    server = create_server(args.config, config.from_flags(args.backend_url, args.model))
    tcp = getattr(args, "tcp", None)
    if tcp:
        from phi_lsp.lsp.tcp_auth import TOKEN_ENV, TokenError, load_token

        host, _, port = tcp.rpartition(":")
        try:
            token, generated = load_token(getattr(args, "tcp_token_file", None))
        except TokenError as exc:
            print(f"phi-lsp: {exc}", file=sys.stderr)
            return 2

        def listening(bound_host: str, bound_port: int) -> None:
            # On stderr, whatever --log-file says: the editor integration reads these lines.
            print(f"phi-lsp: listening on {bound_host}:{bound_port}", file=sys.stderr, flush=True)
            if generated:
                print(f"phi-lsp: TCP token: {token} (send the header `Phi-Lsp-Token: {token}` first; "
                      f"or set {TOKEN_ENV} / --tcp-token-file)", file=sys.stderr, flush=True)

        code = server.start_tcp(host or "127.0.0.1", int(port), token, listening)
    else:
        # Anything a library prints must not corrupt the LSP stream on stdout.
        stdout = sys.stdout.buffer
        sys.stdout = sys.stderr
        code = server.start_io(sys.stdin.buffer, stdout)
    logging.shutdown()
    sys.stderr.flush()
    # A thread may still be blocked reading stdin; do not wait for it.
    os._exit(code)


async def _serve_model(args: argparse.Namespace) -> int:
    from phi_lsp.model.managed_vllm import ManagedVllm, ManagedVllmError
    from phi_lsp.model.cli_backend import model_configured, write_serve_model_record

    manager = _cli_settings(args)
    managed = ManagedVllm.from_settings(manager.settings, model_configured(manager))
    if args.port:
        managed.port = args.port
    if managed.model.note:
        print(managed.model.note, file=sys.stderr)

    def progress(message: str, percent: int | None) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        url = await managed.start(progress)
    except ManagedVllmError as exc:
        print(f"phi-lsp: {exc}", file=sys.stderr)
        return 1
    record = write_serve_model_record(url, managed.model)
    print(f"Serving {managed.model.served_name} at {url}", flush=True)
    print(f"Editors and `phi-lsp review`/`complete` on this machine use it (recorded in {record}).", flush=True)
    print("Press Ctrl+C to stop.", flush=True)
    try:
        while managed.process is not None and managed.process.returncode is None:
            await asyncio.sleep(1)
        print("vLLM exited:\n" + "\n".join(list(managed.output)[-10:]), file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        return 0
    finally:
        record.unlink(missing_ok=True)
        await managed.stop()
