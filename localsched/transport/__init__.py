"""Transport: how bytes move between the scheduler and its worker processes.

Messages travel over the pipes each worker shares with the scheduler; values above a
small threshold travel through shared memory (``shm``), and only a small reference
to them goes over the pipe.
"""
