"""What every endolift command shares, whatever it computes (the lowest layer: imports nothing of endolift's).

- ``core.errors``: ``UserError`` (one line naming the file or setting and the fix), the command-line door
  (``run_cli``: settings checked before Hydra parses them, exit status 2 on bad input).
- ``core.files``: outputs written atomically, the run journal, stale partial files, output-folder locks.
- ``core.settings``: each script's closed table of settings, checked at the door ("did you mean ...").
"""
