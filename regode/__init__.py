"""regode: learned and per-pair 3D brain MRI registration with ANTs-compatible outputs.

Frames used throughout (see docs/conventions.md):

* world: LPS millimetres, as ITK, SimpleITK and ANTs use; every transform maps
  world points of the fixed (reference) space to world points of the moving space;
* index: continuous voxel index (i, j, k) in ITK order (fastest axis first);
* normalised: index scaled to [-1, 1] per axis, corners aligned, the frame
  ``torch.nn.functional.grid_sample`` wants.
"""

__version__ = "0.1.0"
