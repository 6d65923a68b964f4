"""Planning a run from its data and its GPU, after nnU-Net v2's published rules (docs/planning.md).

- fingerprint: what the dataset is (shapes, spacings, foreground intensities, class sizes), computed once
  per data source and kept as JSON beside the case store;
- topology: how a U-Net pools a patch (stages, strides and kernel sizes per axis);
- memory: how much a configuration needs, as nnU-Net estimates it, and what a budget allows;
- planner: target spacing, patch, topology, features and batch size per configuration (2d, 3d_fullres);
- apply: the plan as ordinary config values (plan=auto).
"""
