"""Serves a folder on 127.0.0.1 for scripts/web-test.sh. GET /__hold__ is answered only once the
page has POSTed /__done__ (or after --hold-seconds): the test page requests it before its load
event, so headless Chromium's --dump-dom / --screenshot wait for the page's job to finish."""

import argparse
import functools
import http.server
import threading

done = threading.Event()


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".js": "text/javascript"}
    hold_seconds = 600.0

    def do_GET(self):
        if self.path.startswith("/__hold__"):
            done.wait(self.hold_seconds)
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()

    def do_POST(self):
        if self.path.startswith("/__done__"):
            done.set()
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

    # A new page load (the screenshot's run) holds again.
    def reset_on_new_page():
        while True:
            done.wait()
            threading.Event().wait(1.0)
            done.clear()

    threading.Thread(target=reset_on_new_page, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
