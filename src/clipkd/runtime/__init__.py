"""What any multi-process job needs, training or the reinforced-data build: the process group (``distributed``),
stop requests from signals (``preemption``) and CPU threads (``threads``). Imports nothing else of clipkd."""
