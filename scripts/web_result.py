"""The result the page's test mode writes into the DOM (`<pre id="result">`), for scripts/web-test.sh."""

import html
import json
import re
import sys


def page_result(dom_path, what):
    """The page's result object from a `--dump-dom` file; exits naming `what` when the page wrote
    none or reports a failure."""
    m = re.search(r'<pre id="result">(.*?)</pre>', open(dom_path, encoding="utf-8").read(), re.S)
    if not m or not m.group(1).strip():
        sys.exit(f"web-test: {what} wrote no result (see the page's #log / #status)")
    r = json.loads(html.unescape(m.group(1)))
    if not r.get("ok"):
        sys.exit(f"web-test: {what} failed: {r.get('error')}")
    return r
