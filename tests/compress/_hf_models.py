"""Tiny Hugging Face transformers models built from configs (random weights, nothing downloaded), made
numerically well-conditioned so output comparisons mean something: torch's default layer init (HF's
std-0.02 init makes deep CNN outputs vanish to ~1e-25), BatchNorm gamma 1 / beta 0 and its statistics
estimated on random inputs."""
import torch

IMAGE = (2, 3, 32, 32)
TEXT = (2, 8)
VOCAB = 100


def _configs(T):
    return {
        "resnet": lambda: T.ResNetForImageClassification(T.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1], num_labels=10)),
        "mobilenet_v2": lambda: T.MobileNetV2ForImageClassification(T.MobileNetV2Config(
            image_size=32, depth_multiplier=0.35, num_labels=10)),
        "efficientnet": lambda: T.EfficientNetForImageClassification(T.EfficientNetConfig(
            image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, num_labels=10)),
        "convnext": lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
            hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1], num_labels=10)),
        "vit": lambda: T.ViTForImageClassification(T.ViTConfig(
            image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, num_labels=10)),
        "bert": lambda: T.BertForSequenceClassification(T.BertConfig(
            vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            num_labels=3)),
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0)),
    }


HF_MODELS = ("resnet", "mobilenet_v2", "efficientnet", "convnext", "vit", "bert", "gpt2")
TEXT_MODELS = ("bert", "gpt2")


def example_for(name, batch=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    if name in TEXT_MODELS:
        return {"input_ids": torch.randint(0, VOCAB, (batch or TEXT[0], TEXT[1]), generator=g)}
    return {"pixel_values": torch.randn(batch or IMAGE[0], *IMAGE[1:], generator=g)}


@torch.no_grad()
def build(name, seed=0):
    import transformers as T

    T.logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = _configs(T)[name]()
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) or type(m).__name__ == "Conv1D":
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:  # BN statistics of random inputs: activations stay O(1) through the depth
        for m in bns:
            m.reset_parameters()  # gamma 1, beta 0 (HF draws them small) and fresh running statistics
            m.momentum = None
        model.train()
        for i in range(4):
            model(**example_for(name, batch=16, seed=100 + i))
        for m in bns:
            m.momentum = 0.1
    return model.eval()
