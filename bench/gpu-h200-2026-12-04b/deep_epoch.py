"Time epochs of DLwPT 8's 100-block `NetResDeep` on a GPU (10,000 random 32x32 images, batches of 64, plain SGD)."
import time, torch, torch.nn.functional as F
from convlab.dlwpt08 import NetResDeep

torch.manual_seed(0); dev = 'cuda'
m = NetResDeep(n_chans1=32, n_blocks=100).to(dev); opt = torch.optim.SGD(m.parameters(), lr=3e-3)
x = torch.randn(10_000, 3, 32, 32, device=dev); y = torch.randint(0, 2, (10_000,), device=dev)
for ep in range(4):
    torch.cuda.synchronize(); t = time.time()
    for i in range(0, 10_000, 64):
        loss = F.cross_entropy(m(x[i:i+64]), y[i:i+64]); opt.zero_grad(); loss.backward(); opt.step()
    torch.cuda.synchronize(); print(f'epoch {ep}: {time.time()-t:.2f} s (157 steps of 64, 100 blocks, {torch.cuda.get_device_name()})', flush=True)
