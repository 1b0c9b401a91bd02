# A CNN with BatchNorm and max pooling, shuffle=True and no generator of its own. Its float32 runs part
# within 20 steps, by ~1e-3: a max-pool window whose two largest inputs are within rounding of each other
# sends a gradient one way in torch and the other in the converted script (tests/test_training_check.py).
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


rng = np.random.default_rng(0)
labels_np = rng.integers(0, 10, 256)
images_np = (rng.standard_normal((256, 3, 16, 16)) + labels_np[:, None, None, None] / 5).astype(np.float32)
torch.manual_seed(0)
train_loader = DataLoader(TensorDataset(torch.from_numpy(images_np), torch.from_numpy(labels_np)), batch_size=16,
                          shuffle=True)

net = Net()
criterion = nn.CrossEntropyLoss()
optimizer = optim.SGD(net.parameters(), lr=0.05, momentum=0.9)

for epoch in range(4):
    net.train()
    for inputs, targets in train_loader:
        optimizer.zero_grad()
        loss = criterion(net(inputs), targets)
        loss.backward()
        optimizer.step()
    print(epoch, loss.item())
