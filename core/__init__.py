"""What every endolift command shares, whatever it computes (the lowest layer: imports nothing of endolift's).

- ``core.errors``: ``UserError`` (one line naming the file or setting and the fix) and ``guard_task``, which turns
  it into exit status 2 in a Hydra task.
- ``core.cli``: the command-line door (``run_cli``: settings checked before Hydra parses them, exit status 2 on
  bad input).
- ``core.files``: outputs written atomically, the run journal, stale partial files, output-folder locks.
- ``core.settings``: the rules a settings class declares on its fields, each script's table built from them, and
  the check at the door ("did you mean ...").
"""
