"""Backends that run workers: local processes (``local``), containers on a Docker Engine
(``docker``) and Deployments on Kubernetes (``kubernetes``). The SDKs of the last two are
optional extras (``modelgate[docker]``, ``modelgate[kubernetes]``), imported only when used."""
