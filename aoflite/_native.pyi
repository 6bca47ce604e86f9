# The compiled cffi module has no type information of its own: its ffi and
# lib objects expose the C declarations as attributes only at run time.
# aoflite.segment is their one user and converts or annotates what comes
# back at that boundary.
from typing import Any

ffi: Any
lib: Any
