"""`tagger-jax convert-patches CONFIG OUT.sf2`: a GUS patch set (TiMidity config) as a .sf2 bank."""
from __future__ import annotations

import argparse

HELP = ("Convert a GUS patch set (a TiMidity config and its .pat files, e.g. Debian's freepats) "
        "into a SoundFont 2 bank for soundfont_tags.")
EPILOG = ("Example: apt-get download freepats && dpkg -x freepats_*.deb fp && tagger-jax "
          "convert-patches fp/etc/timidity/freepats.cfg freepats.sf2 --patch-dir "
          "fp/usr/share/midi/freepats. Then --set extra_banks=freepats.sf2 or "
          "unseen_banks=...,freepats.sf2 in build-dataset soundfont_tags (docs/datasets.md).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG",
                        help="TiMidity config naming the patches (bank 0 and drum set 0 are read)")
    parser.add_argument("out", metavar="OUT.sf2", help="SoundFont 2 file to write")
    parser.add_argument("--patch-dir", default=None, metavar="DIR",
                        help="folder the config's patch names are relative to (default: the "
                             "config's 'dir' lines, else the config's folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT.sf2")


def _programs(numbers) -> str:
    return ", ".join(map(str, numbers)) or "none"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def run(args: argparse.Namespace) -> int:
    import sys

    from tagger_jax import errors, gus_patches, outputs

    out = outputs.check_output_file(args.out)
    if out.suffix.lower() != ".sf2":
        raise errors.ConfigError(f"{out}: the output must end in .sf2 (the banks' file type)")
    if out.exists() and not args.overwrite:
        raise outputs.OutputError(f"{out}: exists (give --overwrite to replace it)")
    patch_set = gus_patches.read_config(args.config, args.patch_dir)
    out.parent.mkdir(parents=True, exist_ok=True)  # check_output_file proved it can be made
    if patch_set.ignored:
        print(f"not read from {args.config}: {', '.join(patch_set.ignored)} (read: dir, "
              "source, and the patches of bank 0 and drumset 0, General MIDI's)", file=sys.stderr)
    from tqdm import tqdm

    from tagger_jax.progress import bar_interval

    with tqdm(total=len(patch_set.programs) + len(patch_set.drums), desc="converting patches",
              unit="patch", **bar_interval()) as bar:
        result = gus_patches.convert(patch_set, name=out.stem, on_patch=lambda _: bar.update())
    outputs.atomic_write_bytes(out, result.sf2)
    filled = ", ".join(f"{p} by {q}" for p, q in result.filled.items())
    print(f"converted {_count(len(result.programs), 'program')}, "
          f"{_count(len(result.drum_keys), 'drum key')} and "
          f"{_count(result.num_samples, 'sample')} from {args.config} -> {out} "
          f"({len(result.sf2) / 2**20:.1f} MiB)")
    print("programs (numbered 0-127) the set lacks, played by the nearest of their GM family: "
          f"{filled or 'none'}")
    if result.missing:
        print(f"programs with no program of their family: {_programs(result.missing)} (left "
              "to the synthesizer: midirenderer plays the bank's first preset for them)")
    if not result.drum_keys:
        print(f"warning: {args.config} has no drum set 0, so the bank has no drum kit: drum "
              "parts would be played by another preset and labelled drums; do not build "
              "soundfont_tags with it", file=sys.stderr)
    return 0
