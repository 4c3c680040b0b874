"""The models and their building blocks: member-batched networks (nets), every loss and bound once
(objectives), CUDA-graph replay (graphs) and the registry of models (models). Imports nothing of avae
but errors."""
