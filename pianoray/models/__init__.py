"""Models: pure nn.Modules. Every encoder meets one contract (``pianoray.models.contract``) and is found
through the registry (``pianoray.models.registry``); nothing here imports ray."""
