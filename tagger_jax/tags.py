"""Tag vocabularies that ship with the package, and how a user's tag files are read (tag lists,
the CSV columns, delimiters and tag separator shared by `audio_folder` and `explain --tags-from`).

The MagnaTagATune top-50 list is in frequency order, which is the index order of the authors'
released checkpoint (see `shared/reference/original-implementation.md`). Checkpoints imported from
the authors' code carry this list; every other checkpoint carries the vocabulary of its dataset.
"""

MTAT_TOP50: tuple[str, ...] = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral",
)

assert len(MTAT_TOP50) == 50 and len(set(MTAT_TOP50)) == 50

# A CSV of a user's tags: `audio_folder`'s defaults, also read by `explain --tags-from`.
CSV_PATH_COLUMN = "path"  # column with the audio file path
CSV_TAGS_COLUMN = "tags"  # column of tag names joined by CSV_TAG_SEPARATOR
CSV_TAG_SEPARATOR = ";"  # separator inside the tags column
CSV_SPLIT_COLUMN = "split"  # optional column naming each row's split

# Text files a user hands over (tag lists, split and label tables): UTF-8, with the byte-order
# mark that Windows editors write at the start dropped. Read as plain "utf-8" the mark stayed in
# the first tag's name ('\ufeffguitar', found by a new user's trial): a model whose first tag
# matched no dataset, and builds refusing tags that were in the list.
TEXT_ENCODING = "utf-8-sig"


def listed(tags) -> str:
    """Tag names for a message: "rock, jazz, piano"; when one of them holds a comma, starts or
    ends with a space or is empty, every name is quoted ('"flute, loud", "drums"'), since a bare
    join would read as more tags than there are."""
    import json

    tags = [str(t) for t in tags]
    if any("," in t or t != t.strip() or not t for t in tags):
        return ", ".join(json.dumps(t, ensure_ascii=False) for t in tags)
    return ", ".join(tags)


def folded(name: str) -> str:
    """`name` without case, spaces, '-' and '_' (and surrounding blanks): what two spellings of
    one tag or split name share (`Hold-Out`, `hold_out`, `holdout`)."""
    return "".join(c for c in name.strip().casefold() if c not in " -_")


def nearest(names, known, cutoff: float = 0.8) -> dict[str, str]:
    """{name: the known tag it most likely means} for each of `names` not in `known`: the tag
    equal once `folded`, else difflib's closest (similarity at least `cutoff`); names with
    neither are left out."""
    import difflib

    known = [str(t) for t in known]
    found = {}
    for name in map(str, names):
        if name in known:
            continue
        near = [t for t in known if folded(t) == folded(name)] or difflib.get_close_matches(
            name, known, n=1, cutoff=cutoff)
        if near:
            found[name] = near[0]
    return found


def did_you_mean(names, known) -> str:
    """"" or "; did you mean 'piano'?" ("'piano' for 'Piano', 'cello' for 'celo'" for several)
    for the unknown `names`, by `nearest`: the tail of an unknown-tags message."""
    near = nearest(names, known)
    if not near:
        return ""
    if len(near) == 1:
        return f"; did you mean {next(iter(near.values()))!r}?"
    return "; did you mean " + ", ".join(f"{t!r} for {n!r}" for n, t in near.items()) + "?"


def indices(names, known) -> list[int]:
    """The positions of tag `names` in `known` (a model's tag list, e.g. `LoadedModel.tags`), in
    the order given: what the explanation methods' `tags` arrays hold. ValueError naming the
    unknown names, with `did_you_mean`'s hint, if any is not in `known`."""
    names = [names] if isinstance(names, str) else [str(n) for n in names]
    known = [str(t) for t in known]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown tags: {listed(unknown)} (the model's {len(known)} tags: "
                         f"{listed(known[:8])}{', ...' if len(known) > 8 else ''})"
                         f"{did_you_mean(unknown, known)}")
    return [known.index(n) for n in names]


def read_tag_list(path) -> list[str]:
    """The tag names of a text file, one per line (`TEXT_ENCODING`; surrounding spaces, blank
    lines and Windows line ends dropped). Raises OSError or UnicodeDecodeError as `open` does."""
    from pathlib import Path

    text = Path(path).read_text(encoding=TEXT_ENCODING)
    return [t.strip() for t in text.splitlines() if t.strip()]


# Delimiters and tag separators by name (`--set delimiter=tab`: a tab is awkward in a shell).
SEPARATOR_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|",
                   "space": " "}


def excel_separator(path, first_line: str) -> str | None:
    """The delimiter a CSV's first line `sep=X` declares (Excel writes it, and reads it as no
    row), else None. From a new user's trial: the header became `['sep=', '']`, and the hint
    that followed (`--set delimiter=semicolon`) still ended in "no 'path' column". A `sep=`
    line that names no one character (or separator name) is refused, saying to delete it."""
    line = first_line.rstrip("\r\n")
    if not line.lower().startswith("sep="):
        return None
    value = line[4:]
    if len(value) == 1:
        return value
    named = SEPARATOR_NAMES.get(value.strip().lower())
    if named and len(named) == 1:
        return named
    raise ValueError(f"{path}:1: {line!r} looks like Excel's delimiter line (sep=X) but names no "
                     "one-character delimiter; delete that line (for audio_folder also --set "
                     "delimiter=... if the file is not comma-separated)")
