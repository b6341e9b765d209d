#!/usr/bin/env python
"""Serve age/gender estimation over HTTP: the models are loaded once, requests share a pool of workers.

    python serve.py --host 127.0.0.1 --port 8080
    curl -F image=@photo.jpg http://127.0.0.1:8080/analyze        # the JSON record test.py writes
    curl --data-binary @photo.jpg http://127.0.0.1:8080/analyze   # the same, raw bytes as the body
    python serve.py --backend onnx --workers 2                    # onnxruntime (python export.py --defaults)

GET / is an upload page showing the annotated picture and a table of faces; GET /health says it is up.
"""
import argparse
import socket
import sys

from agegender import config
from agegender.cli import EXIT_OK, run_main
from agegender.errors import AgeGenderError, UsageParser
from agegender.files import print_error
from analysis.options import add_analyzer_options, analyzer_from_args, check_analyzer_options


def build_parser():
    parser = UsageParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port")
    add_analyzer_options(parser, aligned_help="uploads are already aligned faces (no detector)")
    parser.add_argument("--workers", type=int, default=1,
                        help="requests analysed at the same time, each worker with its own loaded models")
    parser.add_argument("--queue", type=int, default=config.SERVE_QUEUE,
                        help="requests that may wait for a worker; more are answered 503")
    parser.add_argument("--max-bytes", type=int, default=config.SERVE_MAX_BYTES,
                        help="largest accepted request body (413 above)")
    parser.add_argument("--max-pixels", type=int, default=config.SERVE_MAX_PIXELS,
                        help="pictures above this are decoded at reduced size (sequential JPEG) or refused (413)")
    return parser


def main(argv=None):
    return run_main(lambda: _main(argv))


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_analyzer_options(parser, args)
    for name in ("workers", "max_bytes", "max_pixels"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.queue < 0:
        parser.error("--queue must be at least 0")
    listener = listen(args.host, args.port)      # before the models load: a taken port fails at once
    from analysis.service import create_app
    analyzers = [analyzer_from_args(args) for _ in range(args.workers)]
    import uvicorn
    app = create_app(analyzers, max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_waiting=args.queue,
                     backend=args.backend)
    host, port = listener.getsockname()[:2]
    print_error(f"INFO:     serve.py listening on http://{host if ':' not in host else f'[{host}]'}:{port} "
                f"(Ctrl+C to quit)")
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[listener])
    return EXIT_OK


def listen(host, port):
    """A listening TCP socket on ``host:port`` (port 0: one the system picks); AgeGenderError if it cannot."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        raise AgeGenderError(f"--host {host}: cannot listen there ({exc.strerror or exc})") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise AgeGenderError(f"--host {host} --port {port}: cannot listen ({exc.strerror or exc})") from None
    return listener


if __name__ == "__main__":
    sys.exit(main())
