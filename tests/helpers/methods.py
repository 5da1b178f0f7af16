"""Tiny timm models, toy data, parameter snapshots and the exact trainable-parameter counts of every method on
timm resnet18 and vit_tiny_patch16_224 (10 classes), computed from the architectures (tests/test_methods.py,
test_lr_methods.py)."""

import timm
import torch


def small(family, num_classes=3, seed=0):
    """A seeded tiny model of ``family``: resnet18 with channels 8..64, or a 2-block vit_tiny on 32 px."""
    torch.manual_seed(seed)
    if family == "resnet":
        # zero_init_last=False: timm zero-initialises each block's last BN scale, so a fresh ResNet's
        # outputs would not depend on the block convolutions and the merge tests would prove nothing.
        return timm.create_model("resnet18", num_classes=num_classes, channels=(8, 16, 32, 64), zero_init_last=False)
    return timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, img_size=32, patch_size=8, depth=2)


def toy(family, n=32, seed=0, classes=3):
    """``n`` seeded grey images sized for :func:`small`'s ``family`` and random labels: (images, labels)."""
    g = torch.Generator().manual_seed(seed)
    hw = 16 if family == "resnet" else 32
    return (torch.randint(0, 256, (n, 1, hw, hw), dtype=torch.uint8, generator=g),
            torch.randint(0, classes, (n,), generator=g))


def snapshot(model):
    """A copy of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, after):
    """The names whose tensors differ between two :func:`snapshot` s."""
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


# resnet18's stage widths; vit_tiny_patch16_224's width and depth; the classes of the count tests
R18_WIDTHS, D, DEPTH, NC = (64, 128, 256, 512), 192, 12, 10


def resnet18_layout():
    """(name, in, out, kernel) of every convolution and the BatchNorm widths of timm resnet18."""
    convs, bns, cin = [("conv1", 3, 64, 7)], [64], 64
    for s, w in enumerate(R18_WIDTHS):
        for b in range(2):
            pre = f"layer{s + 1}.{b}"
            convs += [(f"{pre}.conv1", cin, w, 3), (f"{pre}.conv2", w, w, 3)]
            bns += [w, w]
            if b == 0 and s > 0:
                convs.append((f"{pre}.downsample.0", cin, w, 1))
                bns.append(w)
            cin = w
    return convs, bns


def expected_resnet(name, params):
    """Method ``name``'s trainable parameters on timm resnet18 with NC classes, from its layout."""
    convs, bns = resnet18_layout()
    head = 512 * NC + NC
    r = params.get("rank", 8)
    blocks = params.get("blocks")
    if name == "siamese":  # copies of the selected blocks (each conv + its BatchNorm) and a head on 2 x 512
        return sum(cin * cout * k * k + 2 * cout for n, cin, cout, k in convs
                   if any(n.startswith(b + ".") for b in blocks)) + 2 * 512 * NC + NC
    lora_convs = [c for c in convs if c[3] == 3 and c[0].startswith("layer")
                  and (blocks is None or any(c[0].startswith(b + ".") for b in blocks))]
    lora = sum(r * cin * 9 + cout * r for _, cin, cout, _ in lora_convs)
    if params.get("variant") == "dora":
        lora += sum(cout for _, _, cout, _ in lora_convs)
    return {
        "bitfit": sum(bns) + head,
        "lora": lora + head,
        "subtuning_lora": lora + head,
        "ssf": 2 * sum(bns) + head,
        "san": sum(cout for _, _, cout, _ in convs) + 2 * sum(bns) + head,
        "lpft": sum(cin * cout * k * k for _, cin, cout, k in convs) + 2 * sum(bns) + head,
        # AdaLoRA: Q (r0 x cin*9), Lambda (r0), P (cout x r0) per adapted 3x3 convolution
        "adalora": sum(params.get("init_r", 12) * (cin * 9 + 1 + cout) for _, cin, cout, _ in lora_convs) + head,
    }[name]


def expected_vit(name, params):
    """Method ``name``'s trainable parameters on timm vit_tiny_patch16_224 with NC classes, from its layout."""
    head = D * NC + NC
    r = params.get("rank", 8)
    nblocks = len(params.get("blocks", range(DEPTH)))
    # per block: qkv D->3D, proj D->D, fc1 D->4D, fc2 4D->D
    lora = nblocks * r * ((D + 3 * D) + (D + D) + (D + 4 * D) + (4 * D + D))
    if params.get("variant") == "dora":
        lora += nblocks * (3 * D + D + 4 * D + D)
    tokens = (224 // 16) ** 2 + 1
    block = 4 * D + 3 * D * D + 3 * D + D * D + D + 4 * D * D + 4 * D + 4 * D * D + D
    total = 3 * 16 * 16 * D + D + D + tokens * D + DEPTH * block + 2 * D + head
    return {
        # biases: patch proj; per block norm1, qkv, proj, norm2, fc1, fc2; the final norm
        "bitfit": D + DEPTH * (D + 3 * D + D + D + 4 * D + D) + D + head,
        "lora": lora + head,
        "subtuning_lora": lora + head,
        # positions: patch embed; per block norm1, qkv, proj, norm2, fc1, fc2; the final norm (scale + shift)
        "ssf": 2 * (D + DEPTH * (D + 3 * D + D + D + 4 * D + D) + D) + head,
        # scales: patch embed; per block qkv, proj, fc1, fc2; LayerNorm affine: norm1, norm2, final norm
        "san": D + DEPTH * (3 * D + D + 4 * D + D) + DEPTH * 4 * D + 2 * D + head,
        "lpft": total,
        "siamese": len(params.get("blocks", [])) * block + 2 * D * NC + NC,
        # AdaLoRA: Q (r0 x d_in), Lambda (r0), P (d_out x r0) on qkv, proj, fc1, fc2 of every block
        "adalora": DEPTH * params.get("init_r", 12) * ((D + 1 + 3 * D) + (D + 1 + D) + (D + 1 + 4 * D)
                                                       + (4 * D + 1 + D)) + head,
    }[name]
