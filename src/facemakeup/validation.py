"""Checks of user input at the edge (CLI and ``FaceMakeUpPipeline.check_inputs``), done once, before any work.

Small functions, each raising a named error (``facemakeup.errors``) whose message names the value,
the limit and the fix. Callers pass the name the user knows the value by (``"--ip-scale"`` on the
command line, ``"`ip_scale`"`` in Python), so the same check reads right in both places.

The documented limits:

=====================================  =================  ==========================================
value                                  accepted           why
=====================================  =================  ==========================================
guidance scale                         finite, 0 .. 30    CFG beyond ~20 saturates SD 1.5's images
ID / CLIP / ShadingNet scales          finite, 0 .. 5     IP-Adapter and ControlNet UIs stop at 1-2
reference weights                      finite, >= 0,      they are normalised to sum 1
                                       sum > 0
seed                                   0 .. 2**64 - 1     ``torch.Generator.manual_seed``'s range
height, width                          8 .. 2048,         the VAE downsamples by 8; SD 1.5 was trained
                                       multiple of 8      at 512 and its VAE decoder needs ~10 GB at 2048
prompt                                 1 .. 75 tokens     CLIP's 77 positions less start/end tokens
=====================================  =================  ==========================================

Example:
    >>> check_number(0.6, "ip_scale", low=0, high=MAX_ID_SCALE)
    0.6
    >>> check_number(float("nan"), "ip_scale", low=0, high=MAX_ID_SCALE)
    Traceback (most recent call last):
    facemakeup.errors.FaceMakeUpInputError: ip_scale must be a finite number in [0, 5], got nan; ...
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from numbers import Integral, Real
from pathlib import Path

from .errors import FaceMakeUpInputError, OutputError

logger = logging.getLogger(__name__)

#: Upper bound of the classifier-free guidance scale.
MAX_GUIDANCE_SCALE = 30.0
#: Upper bound of ``ip_scale``, ``s_scale`` and the ShadingNet's conditioning scale.
MAX_ID_SCALE = 5.0
#: Largest height or width in pixels.
MAX_SIDE = 2048
#: Seeds are ``0 <= seed < MAX_SEED``.
MAX_SEED = 2**64


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def check_number(value, name: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
                 fix: str = "") -> float:
    """A finite real number within ``[low, high]`` (``(low, high]`` with ``low_open``).

    Args:
        value: the number (``bool`` is refused).
        name: how the user knows the value (``"--ip-scale"``, ``"`ip_scale`"``).
        low, high: inclusive bounds, ``None`` for none.
        low_open: exclude ``low`` itself.
        fix: what to do instead (default: "pass a value in that range").

    Returns:
        ``value`` as a ``float``.

    Raises:
        FaceMakeUpInputError: not a real number, NaN, infinite, or out of range.
    """
    lo = "" if low is None else ("(" if low_open else "[") + _fmt(low)
    hi = "" if high is None else _fmt(high) + "]"
    span = f" in {lo or '(-inf'}, {hi or 'inf)'}" if low is not None or high is not None else ""
    problem = None
    if isinstance(value, bool) or not isinstance(value, Real):
        problem = f"got {value!r} ({type(value).__name__})"
    elif not math.isfinite(value):
        problem = f"got {value!r}"
    elif (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
        problem = f"got {_fmt(value)}"
    if problem:
        raise FaceMakeUpInputError(f"{name} must be a finite number{span}, {problem}; {fix or 'pass a value in that range'}")
    return float(value)


def check_integer(value, name: str, *, low: int | None = None, high: int | None = None, fix: str = "") -> int:
    """An integer within ``[low, high]`` (either bound may be ``None``).

    Raises:
        FaceMakeUpInputError: not an integer (``bool`` and floats are refused) or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise FaceMakeUpInputError(f"{name} must be an integer, got {value!r} ({type(value).__name__}); {fix or 'pass a whole number'}")
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise FaceMakeUpInputError(f"{name} must be an integer in {span}, got {value}; {fix or 'pass a value in that range'}")
    return int(value)


def check_seed(seed, name: str = "seed") -> int:
    """A seed for ``torch.Generator.manual_seed``: an integer in ``[0, 2**64 - 1]``.

    Raises:
        FaceMakeUpInputError: out of that range or not an integer.
    """
    return check_integer(seed, name, low=0, high=MAX_SEED - 1, fix="pass a seed from 0 to 2**64 - 1 = 18446744073709551615")


def check_side(value, name: str, *, multiple: int = 8, limit: int = MAX_SIDE) -> int:
    """An output height or width: a positive multiple of ``multiple`` up to ``limit`` pixels.

    Raises:
        FaceMakeUpInputError: not an integer, not positive, not a multiple, or over the limit.
    """
    value = check_integer(value, name, fix=f"pass a multiple of {multiple} from {multiple} to {limit}")
    if value <= 0 or value % multiple or value > limit:
        nearest = min(max(multiple, round(value / multiple) * multiple), limit)
        raise FaceMakeUpInputError(
            f"{name} must be a positive multiple of {multiple} up to {limit} pixels, got {value}; pass e.g. {nearest} "
            f"(the VAE downsamples by {multiple}; above {limit} px SD 1.5 repeats content and the decoder runs out of memory)"
        )
    return value


def check_weights(weights, count: int, name: str, *, what: str = "reference") -> list[float]:
    """Mixing weights: ``count`` finite numbers >= 0 with a positive sum.

    Raises:
        FaceMakeUpInputError: wrong count, a non-finite or negative value, or a zero sum.
    """
    weights = list(weights)
    if len(weights) != count:
        raise FaceMakeUpInputError(f"{len(weights)} {name} value(s) for {count} {what}(s); pass one per {what}, or none for equal weights")
    out = [check_number(w, f"{name} #{i + 1}", low=0, fix="weights are relative: pass finite numbers >= 0") for i, w in enumerate(weights)]
    if sum(out) <= 0:
        raise FaceMakeUpInputError(f"{name} sum to 0 ({weights!r}); give at least one {what} a positive weight")
    return out


def check_text(text, name: str, *, allow_empty: bool = False) -> str:
    """Prompt text: a ``str`` that is valid UTF-8 and (unless ``allow_empty``) not blank.

    Text read from a file or a shell substitution in another encoding reaches Python as lone
    surrogates (``\\udcXX``, PEP 383); they are refused here, with the offending byte, rather than
    failing later in the tokenizer or the PNG metadata.

    Raises:
        FaceMakeUpInputError: not a string, not UTF-8, or blank.
    """
    if not isinstance(text, str):
        raise FaceMakeUpInputError(f"{name} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"character U+{ord(bad):04X}"
        raise FaceMakeUpInputError(
            f"{name} is not valid UTF-8 text ({byte} at character {err.start}); save the prompt (file) as UTF-8, "
            "e.g. `iconv -f latin1 -t utf-8 prompt.txt`"
        ) from None
    if not allow_empty and not text.strip():
        raise FaceMakeUpInputError(f"{name} is empty; describe the image to generate, e.g. \"a smiling woman with blonde hair\"")
    return text


def check_prompt_length(tokenizer, text: str, name: str, *, truncate: bool = False, fix: str = "") -> int:
    """Count a prompt's tokens against the text encoder's window.

    Args:
        tokenizer: a transformers CLIP tokenizer (``model_max_length`` 77 for SD 1.5, start and end
            tokens included).
        text: the prompt.
        name: how the user knows it.
        truncate: over-long prompts are cut (with a logged warning) instead of refused.
        fix: how to allow truncation (e.g. ``"pass --truncate-prompt"``).

    Returns:
        The number of tokens that will be dropped (0 when it fits).

    Raises:
        FaceMakeUpInputError: over-long and ``truncate`` is False.
    """
    limit = tokenizer.model_max_length - 2  # start and end tokens
    n = len(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)
    if n <= limit:
        return 0
    dropped = n - limit
    kept = tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids[:limit])
    # the tiny models' tokenizer has no BPE merges: a token per letter, where CLIP's has about one per word
    unit = f" (this model's tokenizer makes one token per letter, so about {limit} letters)" if n >= len("".join(text.split())) else ""
    if not truncate:
        raise FaceMakeUpInputError(
            f"{name} is {n} tokens, over the text encoder's limit of {limit}{unit}: the last {dropped} would be dropped "
            f"(it would end at \"...{kept[-40:]}\"); shorten it, or {fix or 'allow truncation'}"
        )
    logger.warning("%s is %d tokens, over the limit of %d: dropping the last %d (it now ends at \"...%s\")",
                   name, n, limit, dropped, kept[-40:])
    return dropped


# ---------------------------------------------------------------------------------------------- output folders
class OutputFolder:
    """An output folder checked before any work and written all-or-nothing.

    Policy: a folder that does not exist is created; an existing folder must be empty unless
    ``overwrite`` is set. With ``overwrite``, the files of the earlier run (``previous``: the names
    its record lists) are removed when the new results are committed, and any other file is left
    alone. Results are written into a hidden staging folder inside it (``begin``) and moved into
    place (``commit``) only when all of them are written, so a failed run (disk full, an error)
    leaves no partial file and keeps the earlier results (``cleanup``).

    Args:
        path: the folder.
        name: how the user knows it (``"--out"``), for messages.
        overwrite: allow a non-empty folder.
        expected_bytes: an upper bound of what the run will write; refused when the file system has
            less free space.

    Raises:
        OutputError: ``path`` is a file, its nearest existing folder is not writable, there is not
            enough free space, or it is not empty and ``overwrite`` is False.
    """

    def __init__(self, path: str | os.PathLike, name: str = "output folder", *, overwrite: bool = False, expected_bytes: int = 0,
                 overwrite_hint: str = "pass overwrite=True"):
        self.path = Path(path)
        self.name = name
        self.overwrite = overwrite
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"{name} {self.path} is a file, not a folder; pass a folder path")
        anchor = self.path
        while not anchor.exists():  # the nearest existing folder: where the new folders will be made
            anchor = anchor.parent
        if not anchor.is_dir():
            raise OutputError(f"{name} {self.path}: {anchor} is a file, so the folder cannot be made there; pass another path")
        try:  # a real write: os.access says yes to root on read-only mounts
            fd, probe = tempfile.mkstemp(prefix=".facemakeup-write-test-", dir=anchor)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise OutputError(f"{name} {self.path} is not writable ({anchor}: {err.strerror}); pass a folder you can write to") from None
        free = shutil.disk_usage(anchor).free
        if free < expected_bytes:
            raise OutputError(
                f"{name} {self.path}: only {free / 1e6:.1f} MB free on its file system, the results need up to "
                f"{expected_bytes / 1e6:.1f} MB; free some space or pass a folder on another disk"
            )
        self.existing = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        if self.existing and not overwrite:
            shown = ", ".join(self.existing[:4]) + (", ..." if len(self.existing) > 4 else "")
            raise OutputError(
                f"{name} {self.path} is not empty ({len(self.existing)} entries: {shown}); pass an empty or new folder, "
                f"or {overwrite_hint} to replace earlier results"
            )

    def begin(self) -> Path:
        """Make the folder (and its parents) and a hidden staging folder in it; returns the staging folder.

        Write the results there, then ``commit``; call ``cleanup`` in any case (it removes what a
        failed run left: the staging folder and the folders made for it).
        """
        self._made = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        self._stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.path))
        return self._stage

    def commit(self, names: list[str], previous: list[str] = ()) -> None:
        """Move the staged ``names`` into the folder, after removing the earlier run's ``previous`` files.

        Args:
            names: file names written into the staging folder.
            previous: names of the earlier run's files (removed with ``overwrite``; others are left alone).
        """
        if self.overwrite:
            for old in previous:
                target = self.path / old
                if old not in names and Path(old).name == old and target.is_file():
                    target.unlink()
        for n in names:
            os.replace(self._stage / n, self.path / n)

    def cleanup(self) -> None:
        """Remove the staging folder and, if the run failed, the folders made for it (those left empty)."""
        stage = getattr(self, "_stage", None)
        if stage is not None and stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
        for p in getattr(self, "_made", []):  # deepest first; stops at the first that holds results
            try:
                p.rmdir()
            except OSError:
                break
