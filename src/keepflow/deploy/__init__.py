"""The deploy pipeline (SPEC §11.3): what a script passes before it becomes a workflow's
version — the real engine's parse and manifest rules, then the static checks
(:mod:`keepflow.deploy.validation`). ``keepflow.service.deploy`` stores what passes;
``keepflow check`` runs the same pipeline without deploying.
"""
