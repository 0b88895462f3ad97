"""The tritonserver process: its command line (``serve``), starting and stopping it, and the
supervisor that keeps the start-up models loaded. No network library is imported here.
"""
