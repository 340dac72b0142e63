import torch

from transcoders.activations import jumprelu, topk


def test_jumprelu_forward_is_strict():
    pre = torch.tensor([[0.5, 0.2, -1.0, 0.3]])
    theta = torch.tensor([0.4, 0.2, 0.0, 0.1])
    assert torch.equal(jumprelu(pre, theta, 0.1), torch.tensor([[0.5, 0.0, -0.0, 0.3]]))


def test_jumprelu_gradients_match_hand_computation():
    eps = 0.1
    pre = torch.tensor([[0.42, 0.10, 0.31], [0.38, 0.50, 0.29]], requires_grad=True)
    theta = torch.tensor([0.40, 0.12, 0.30], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (jumprelu(pre, theta, eps) * g).sum().backward()
    # ∂a/∂pre = 1[pre > θ]
    assert pre.grad is not None and torch.equal(pre.grad, g * torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    # ∂a/∂θ = -(θ/ε)·1[|pre-θ| < ε/2] per token, summed: feature 0 both tokens in the window (|.02|, |.02|),
    # feature 1: |-.02| in, |.38| out; feature 2: |.01|, |.01| in
    expected = torch.tensor([-(0.4 / eps) * (1 + 4), -(0.12 / eps) * 2, -(0.3 / eps) * (3 + 6)])
    torch.testing.assert_close(theta.grad, expected)


def test_topk_keeps_k_largest_positive():
    pre = torch.tensor([[0.1, -0.5, 0.9, 0.3], [-1.0, -2.0, -0.1, -3.0]])
    assert torch.equal(topk(pre, 2), torch.tensor([[0.0, 0.0, 0.9, 0.3], [0.0, 0.0, 0.0, 0.0]]))
