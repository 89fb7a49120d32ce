"""Independent torch re-implementations of the segmentation reference's networks (the oracles),
written from METHOD.md 11.11-11.14 and the reference's module names: DeepLab-v1 head, the ASPP
head of the evidently intended DeepLab-v2, and the deep-stem dilated ResNet-101."""

import torch

from test_models import torch_reference_classes

nn, F = torch.nn, torch.nn.functional


class TBottleneck(nn.Module):

  def __init__(self, cin, planes, stride, dilation, downsample, bn_mom):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes, momentum=bn_mom)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(planes, momentum=bn_mom)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4, momentum=bn_mom)
    self.downsample = None
    if downsample:
      self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes * 4, momentum=bn_mom))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TResNetDeep(nn.Module):
  """Deep stem (3x3/2, 3x3, 3x3 -> 128), max-pool, layers with dilation 2 / 4 (first blocks 1 / 2)."""

  def __init__(self, layers, wd, bn_mom=0.1):
    super().__init__()
    c = lambda n: n // wd  # noqa: E731
    self.conv1 = nn.Sequential(
        nn.Conv2d(3, c(64), 3, 2, 1, bias=False), nn.BatchNorm2d(c(64), momentum=bn_mom),
        nn.ReLU(), nn.Conv2d(c(64), c(64), 3, 1, 1, bias=False),
        nn.BatchNorm2d(c(64), momentum=bn_mom), nn.ReLU(),
        nn.Conv2d(c(64), c(128), 3, 1, 1, bias=False))
    self.bn1 = nn.BatchNorm2d(c(128), momentum=bn_mom)
    cin = c(128)
    plan = ((64, 1, 1, 1), (128, 2, 1, 1), (256, 1, 1, 2), (512, 1, 2, 4))
    for k, (n, (planes, stride, first, rest)) in enumerate(zip(layers, plan), start=1):
      blocks = []
      for i in range(n):
        down = i == 0 and (stride != 1 or cin != c(planes) * 4)
        blocks.append(TBottleneck(cin, c(planes), stride if i == 0 else 1,
                                  first if i == 0 else rest, down, bn_mom))
        cin = c(planes) * 4
      setattr(self, f"layer{k}", nn.Sequential(*blocks))
    self.out_dim = cin

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TASPP(nn.Module):

  def __init__(self, cin, cout, bn_mom, dropout):
    super().__init__()
    for i, rate in enumerate((6, 12, 18, 24), start=1):
      setattr(self, f"branch{i}", nn.Sequential(
          nn.Conv2d(cin, cout, 3, 1, padding=rate, dilation=rate, bias=False),
          nn.BatchNorm2d(cout, momentum=bn_mom), nn.ReLU()))
    self.branch5_conv = nn.Conv2d(cin, cout, 1, 1, 0, bias=False)
    self.branch5_bn = nn.BatchNorm2d(cout, momentum=bn_mom)
    self.conv_cat = nn.Sequential(nn.Conv2d(cout * 5, cout, 1, 1, 0, bias=False),
                                  nn.BatchNorm2d(cout, momentum=bn_mom), nn.ReLU(),
                                  nn.Dropout(dropout))

  def forward(self, x):
    h, w = x.shape[2:]
    g = F.relu(self.branch5_bn(self.branch5_conv(F.adaptive_avg_pool2d(x, (1, 1)))))
    g = F.interpolate(g, (h, w), mode="bilinear", align_corners=True)
    outs = [getattr(self, f"branch{i}")(x) for i in range(1, 5)] + [g]
    return self.conv_cat(torch.cat(outs, 1))


class TDeepLab(nn.Module):
  """backbone ('resnet38' / 'resnet101') + head ('v1' / 'v2'), reference names."""

  def __init__(self, backbone, head, num_classes, wd, stage_blocks=(1, 1, 1, 1),
               layers=(1, 1, 2, 1), dropout=0.0, bn_mom=0.0003, backbone_bn_mom=0.1):
    super().__init__()
    if backbone == "resnet38":
      resnet38_cls, _ = torch_reference_classes(torch)
      self.backbone = resnet38_cls(wd, stage_blocks)
      for m in self.backbone.modules():  # the reference's bn_mom = 0.0003; no Dropout2d here
        if isinstance(m, nn.BatchNorm2d):
          m.momentum = bn_mom
        if isinstance(m, nn.Dropout2d):
          m.p = 0.0
      dim = 4096 // wd
    else:
      self.backbone = TResNetDeep(layers, wd, backbone_bn_mom)
      dim = self.backbone.out_dim
    self.head = head
    if head == "v1":
      self.conv_fov = nn.Conv2d(dim, 512 // wd, 3, 1, padding=12, dilation=12, bias=False)
      self.bn_fov = nn.BatchNorm2d(512 // wd, momentum=bn_mom)
      self.conv_fov2 = nn.Conv2d(512 // wd, 512 // wd, 1, bias=False)
      self.bn_fov2 = nn.BatchNorm2d(512 // wd, momentum=bn_mom)
      width = 512 // wd
    else:
      self.aspp = TASPP(dim, 256 // wd, bn_mom, dropout)
      width = 256 // wd
    self.dropout1 = nn.Dropout(dropout)
    self.cls_conv = nn.Conv2d(width, num_classes, 1)

  def forward(self, x):
    h, w = x.shape[2:]
    if isinstance(self.backbone, TResNetDeep):
      f = self.backbone(x)
    else:
      f = self.backbone.forward_as_dict(x)["conv6"]
    if self.head == "v1":
      f = F.relu(self.bn_fov(self.conv_fov(f)))
      f = F.relu(self.bn_fov2(self.conv_fov2(f)))
    else:
      f = self.aspp(f)
    out = self.cls_conv(self.dropout1(f))
    return F.interpolate(out, (h, w), mode="bilinear", align_corners=True)


def seeded_model(backbone, head, num_classes=5, wd=16, seed=0, **kwargs):
  """A TDeepLab with random weights and random BN affine / running statistics."""
  torch.manual_seed(seed)
  model = TDeepLab(backbone, head, num_classes, wd, **kwargs)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(1 + 0.3 * torch.rand(m.running_var.shape, generator=g))
  return model
