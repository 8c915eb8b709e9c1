"""Where arrays live: the device mesh and shardings (`sharding`), and multi-process
start-up (`distributed`)."""
