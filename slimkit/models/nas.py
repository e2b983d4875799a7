"""``create_model("nas", spec=...)``: a searched architecture (see slimkit.nas) built standalone."""
from slimkit.models._registry import register_model

# NAS-Bench-201's best CIFAR-10 cell (94.37% after 200 epochs, nats_bench_tss.csv) in the C=16, N=5 skeleton.
DEFAULT_SPEC = "nb201:|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"


@register_model(input_size=(3, 32, 32))
def nas(spec=DEFAULT_SPEC, num_classes=10):
    """A searched architecture: spec 'SPACE:BODY', an Arch dict or a JSON file (slimkit.nas)."""
    from slimkit.nas import build_arch

    return build_arch(spec, num_classes)
