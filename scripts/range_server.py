"""A static file server with Range support (Python's http.server has none), for bench-fetch.sh.

usage: python3 range_server.py FILE PORT LOG
Serves FILE at /FILE-NAME with ETag and Range; logs one line per request to LOG:
"<range header or -> <status> <bytes sent>".
"""
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

path, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
size = os.path.getsize(path)
etag = '"%x-%x"' % (size, int(os.path.getmtime(path)))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        start = 0
        status = 200
        if rng and rng.startswith("bytes=") and self.headers.get("If-Range", etag) == etag:
            start = int(rng[6:].split("-")[0])
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(size - start))
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, size - 1, size))
        self.end_headers()
        sent = 0
        with open(path, "rb") as f:
            try:
                sent = self.connection.sendfile(f, start)
            except (BrokenPipeError, ConnectionResetError):
                sent = -1
        with open(log, "a") as lf:
            lf.write("%s %d %d\n" % (rng or "-", status, sent))


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
