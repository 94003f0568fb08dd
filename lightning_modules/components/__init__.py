"""Pure torch/timm parts of the LightningModules (no Lightning import anywhere in this package): iReLU
(:mod:`.irelu`), window pooling and per-window layers (:mod:`.windows`), the quantization encoder
(:mod:`.quant_encoder`), backbones with offline ImageNet weights (:mod:`.backbones`), the zero-shot
network (:mod:`.sketch_net`) and its losses (:mod:`.sbir_losses`). Import each from its module."""
