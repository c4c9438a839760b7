"""Process management: the supervisor, systemd units, and the processes held across restarts."""
