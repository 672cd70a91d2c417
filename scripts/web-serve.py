"""Serves a folder on 127.0.0.1 for scripts/web-test.sh. GET /__hold__ is answered only once the
page has POSTed /__done__ after that request arrived (or after --hold-seconds): the test page
requests it before its load event and before its job starts, so headless Chromium's --dump-dom /
--screenshot wait for that page's own job to finish, however soon one page load follows another."""

import argparse
import functools
import http.server
import threading

posted = threading.Condition()
done_count = 0


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".js": "text/javascript"}
    hold_seconds = 600.0

    def do_GET(self):
        if self.path.startswith("/__hold__"):
            with posted:
                seen = done_count
                posted.wait_for(lambda: done_count > seen, timeout=self.hold_seconds)
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()

    def do_POST(self):
        global done_count
        if self.path.startswith("/__done__"):
            with posted:
                done_count += 1
                posted.notify_all()
            self.send_response(204)
            self.end_headers()
            return
        self.send_error(404)

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--port-file", required=True, help="the chosen port is written here")
    ap.add_argument("--hold-seconds", type=float, default=600.0)
    a = ap.parse_args()
    Handler.hold_seconds = a.hold_seconds
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=a.folder))
    with open(a.port_file, "w") as f:
        f.write(str(server.server_address[1]))

    server.serve_forever()


if __name__ == "__main__":
    main()
