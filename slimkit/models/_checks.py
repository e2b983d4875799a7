"""Input-shape checks shared by the zoo: a wrong input fails with the expected shape named."""
from slimkit.errors import ShapeError


def check_image_input(name, x, channels):
    if x.dim() != 4 or x.shape[1] != channels:
        raise ShapeError(f"{name} expects input [N, {channels}, H, W], got {list(x.shape)}")
