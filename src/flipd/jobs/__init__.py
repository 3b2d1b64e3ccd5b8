"""Jobs: the pipelines behind the command line, as plain functions a notebook or a launcher
calls too. :mod:`.estimate` (FLIPD or a baseline, chunked and resumable), :mod:`.curve`,
:mod:`.train`, :mod:`.demo`, and :mod:`.records` (what a run records)."""
