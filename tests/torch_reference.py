"""PyTorch networks in arcface_torch's layer order (IResNet, MobileFaceNet "mbf"), written for tfface's tests.

Used by ``tests/test_convert.py`` (torch -> ONNX -> tfface equality) and ``bench/torch_train_step.py``
(the same networks' training speed in PyTorch). Requires torch (the ``[torch-test]`` extra).
"""

import torch

nn = torch.nn


class TorchIBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class TorchIResNet(nn.Module):
    def __init__(self, layers, widths=(64, 128, 256, 512), stem=64, num_features=512, map_hw=(7, 7)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-5)
        self.prelu = nn.PReLU(stem)
        blocks, inplanes = [], stem
        for n, planes in zip(layers, widths, strict=True):
            for i in range(n):
                blocks.append(TorchIBasicBlock(inplanes, planes, 2 if i == 0 else 1))
                inplanes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(inplanes * map_hw[0] * map_hw[1], num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, x):
        x = self.blocks(self.prelu(self.bn1(self.conv1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def _conv_block(c_in, c_out, kernel=1, stride=1, padding=0, groups=1, linear=False):
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, *([] if linear else [nn.PReLU(c_out)]))


class TorchDepthWise(nn.Module):
    def __init__(self, c_in, c_out, residual, stride, groups):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(_conv_block(c_in, groups), _conv_block(groups, groups, 3, stride, 1, groups),
                                    _conv_block(groups, c_out, linear=True))

    def forward(self, x):
        return x + self.layers(x) if self.residual else self.layers(x)


class TorchMobileFaceNet(nn.Module):
    """arcface_torch MobileFaceNet ("mbf"), default blocks (1, 4, 6, 2), scale 2."""

    def __init__(self, num_features=512, blocks=(1, 4, 6, 2), scale=2):
        super().__init__()
        a, b = 64 * scale, 128 * scale
        layers = [_conv_block(3, a, 3, 2, 1)]
        if blocks[0] == 1:
            layers.append(_conv_block(a, a, 3, 1, 1, groups=64))
        else:
            layers += [TorchDepthWise(a, a, True, 1, 128) for _ in range(blocks[0])]
        for c_in, c_out, down_groups, groups, n in ((a, a, 128, 128, blocks[1]), (a, b, 256, 256, blocks[2]),
                                                    (b, b, 512, 256, blocks[3])):
            layers.append(TorchDepthWise(c_in, c_out, False, 2, down_groups))
            layers += [TorchDepthWise(c_out, c_out, True, 1, groups) for _ in range(n)]
        self.layers = nn.Sequential(*layers)
        self.conv_sep = _conv_block(b, 512)
        self.features = nn.Sequential(_conv_block(512, 512, 7, 1, 0, groups=512, linear=True), nn.Flatten(),
                                      nn.Linear(512, num_features, bias=False), nn.BatchNorm1d(num_features))

    def forward(self, x):
        return self.features(self.conv_sep(self.layers(x)))
