"""Entry points: the ``modelgate`` command, the ``up`` supervisor and the demo repository.
This layer sits above the services and may import any of them; nothing imports it back."""
