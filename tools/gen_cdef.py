"""Regenerate native/aoflite_cdef.h from native/aoflite.h.

cffi's cdef cannot read preprocessor conditionals or comments, so the
declarations are copied with comments dropped and every #define turned
into '...' (the compiled header supplies the value). tests/test_native.py
fails when the checked-in file is stale: run `python tools/gen_cdef.py`.
"""

from __future__ import annotations

import pathlib
import re
import sys

NATIVE = pathlib.Path(__file__).resolve().parent.parent / "native"
# format constants Python needs, from aof_format.h
EXTRA = [
    "AOF_FORMAT_VERSION",
    "AOF_HEADER_BYTES",
    "AOF_RECORD_HEADER_BYTES",
    "AOF_FOOTER_BYTES",
    "AOF_KEY_ENTRY_BYTES",
    "AOF_MAX_KEY_BYTES",
    "AOF_MAX_RECORD_BYTES",
]


def render() -> str:
    header = (NATIVE / "aoflite.h").read_text()
    body = header[header.index("#define AOF_OK") : header.rindex("#endif")]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    body = re.sub(r"#define (\w+) .*", r"#define \1 ...", body)
    body = re.sub(r"[ \t]+\n", "\n", body)
    body = re.sub(r"\n\s*\n+", "\n", body)
    extra = "".join(f"#define {name} ...\n" for name in EXTRA)
    intro = (
        "/* aoflite_cdef.h: the declarations cffi binds, generated from aoflite.h by\n"
        " * tools/gen_cdef.py (comments dropped, constants '...' so the real headers\n"
        " * supply their values). Do not edit by hand. */\n"
    )
    return intro + body + extra


if __name__ == "__main__":
    out = NATIVE / "aoflite_cdef.h"
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if out.read_text() == text else 1)
    out.write_text(text)
