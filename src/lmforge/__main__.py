"""`python -m lmforge ...`, which is how torchrun starts a command on every rank:
`torchrun --nproc_per_node 2 -m lmforge pretrain ...`."""

from lmforge.cli import main

main()
