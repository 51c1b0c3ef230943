"""The engine only trains: the loop, optimizer and schedule, precision, the global-batch step, checkpoints, the run
folder, resuming, logging. Hooks (:mod:`.hooks`) are the protocol it calls to evaluate; it imports the build layer
below it (config -> distiller, streams, preflight) and no evaluation, export, study or command code."""
