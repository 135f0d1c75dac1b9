"""Execute every chapter top to bottom (skipping `slow`/`cuda` cells unless GEOBOOK_TEST_FLAGS asks for them) and
save its outputs, figures included, back into the notebook: the website shows saved outputs only.

Run from the repo root with the project's Python (`make book` does). Exits non-zero if a chapter fails; a failed
chapter's notebook is left untouched.
"""
import os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import chapters, skip_flags, run_isolated

def main() -> int:
    # saved outputs are what the website shows: no progress bars in them (core's `progress` honours this)
    os.environ.setdefault('GEOBOOK_NO_PROGRESS', '1')
    nbs, flags, failed, total = chapters(), skip_flags(), [], time.time()
    print(f"==> executing {len(nbs)} notebooks (skipping cells flagged: {' '.join(flags) or 'none'})", flush=True)
    for i, nb in enumerate(nbs, 1):
        print(f"[{i}/{len(nbs)}] {nb.name:<32}", end=' ', flush=True)
        ok, secs, errors = run_isolated(nb, save=True)
        print(f"{'ok' if ok else 'FAILED'} in {secs:6.1f} s", flush=True)
        for e in errors: print(f"    error output: {e}", flush=True)
        if not ok: failed.append(nb.name)
    print(f"==> executed in {time.time() - total:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ''))
    return 1 if failed else 0

if __name__ == '__main__': sys.exit(main())
