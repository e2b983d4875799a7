"""Input-shape checks shared by the zoo: a wrong input fails with the expected shape named."""
import torch.fx

from slimkit.errors import ShapeError


def check_image_input(name, x, channels):
    # Under torch.fx symbolic tracing shapes are unknown proxies; the check runs on real tensors only.
    if isinstance(x, torch.fx.Proxy):
        return
    if x.dim() != 4 or x.shape[1] != channels:
        raise ShapeError(f"{name} expects input [N, {channels}, H, W], got {list(x.shape)}")
