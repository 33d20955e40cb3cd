"""`parasim calibrate` and `parasim validate` (docs/validation.md): a hardware profile measured on
this machine through TorchRuntime's own work, and the closed loop that compares TorchRuntime's
measured runs with the simulator's predictions under that profile.

Importing the submodules imports torch; `simulator.cli` imports them only for these commands.
"""
