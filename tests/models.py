"""Small models for the tests: a tiny Hugging Face BERT, a torchvision-style ResNet, a block list."""
import torch
from torch import nn


def tiny_bert(num_layers=4, hidden=32, seed=0, **config):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=2, **config)
    return BertForSequenceClassification(cfg)


class TinyRows(torch.utils.data.Dataset):
    """``n`` rows of 12 token ids for :func:`tiny_bert` (label: the first id > 50); with
    ``index=True`` each row also carries its position (the activation cache's key)."""

    def __init__(self, n=48, index=False):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 100, (n, 12), generator=g)
        self.index = index

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        row = {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
               "labels": int(self.ids[i, 0] > 50)}
        return {"index": i, **row} if self.index else row


def bert_batch(n=8, seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, seq), generator=g)
    labels = (ids[:, 0] > 50).long()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """Same attribute layout as torchvision.models.ResNet."""

    def __init__(self, width=8, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.Identity()
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 2 * width)
        self.layer4 = BasicBlock(2 * width, 4 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class BlockNet(nn.Module):
    """embed -> blocks (Linear+dropout) -> head, for explicit-layout tests."""

    def __init__(self, n_blocks=4, width=6, dropout=0.0):
        super().__init__()
        self.embed = nn.Linear(3, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.Dropout(dropout)) for _ in range(n_blocks))
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = torch.tanh(b(x))
        return self.head(x)


#: the tiny checkpoint's vocabulary (the CLI tests write sentences of these words)
WORDS = "good bad great awful fine poor nice terrible film movie plot acting was is the a very not".split()


def save_tiny_checkpoint(d, **config) -> str:
    """A tiny BERT checkpoint folder with its tokenizer (the CLI loads models from folders);
    ``config`` overrides ``BertConfig`` fields (e.g. dropout)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True)
    cfg = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2, **config)
    BertForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)
